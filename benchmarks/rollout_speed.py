"""Generation alone: the built-in rollout engine against transformers' `generate` on the same model and prompts.

    python benchmarks/rollout_speed.py                                   # small-llama, CPU, 8 prompts x 4 samples
    python benchmarks/rollout_speed.py --preset qwen2-90m-vocab          # a real vocabulary (151,936)
    python benchmarks/rollout_speed.py --compiled                        # also torch.compile's decode step on CPU
    python benchmarks/rollout_speed.py --preset qwen25-05b-like --device cuda --dtype bfloat16 --prompts 64 \\
        --group 8 --max-new-tokens 256                                   # on a GPU: also the compiled decode step

Both engines sample the same P prompts (reverse_words, left-padded) G times each, at most `--max-new-tokens`
tokens at temperature 1, in one process, in alternating order, `--repeats` times after one warm-up call each
(the compiled engine captures its graphs there); the fastest repeat is kept, as noise only slows a run. Reported:
generated tokens per second (EOS included; sampled lengths differ between calls, so per token is the fair
unit), the ratio to `generate`, and on CUDA the peak memory allocated during the call.
`--greedy` decodes the argmax instead: both engines then produce the same tokens (a check that they do the
same work), but a random model rarely stops, so finished rows never leave the batch.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from alignkit.config.presets import load_preset
from alignkit.config.schema import RolloutSpec
from alignkit.data.generators import DATASETS
from alignkit.models import ModelSpec, build_causal_lm, count_parameters, load_tokenizer
from alignkit.rollout.generate import HFEngine
from alignkit.rollout.rollout import SamplingParams
from alignkit.rollout.sampler import BuiltinEngine


def engines(device: torch.device, compiled: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"hf": HFEngine(), "builtin": BuiltinEngine(RolloutSpec(compile=False))}
    if compiled:
        out["builtin compiled"] = BuiltinEngine(RolloutSpec(compile=True))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small-llama", help="model preset (registry/models)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--prompts", type=int, default=8, help="P: prompts per call")
    p.add_argument("--group", type=int, default=4, help="G: samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--greedy", action="store_true", help="argmax decoding: both engines produce the same tokens")
    p.add_argument(
        "--compiled", action="store_true", help="also the compiled static-shape engine (always on CUDA); slow to start"
    )
    args = p.parse_args()

    device = torch.device(args.device)
    spec = ModelSpec(**{k: v for k, v in load_preset("models", args.preset).items() if k != "description"})
    tok = load_tokenizer(spec)
    model = build_causal_lm(spec, tok).to(device, getattr(torch, args.dtype)).eval()
    records = DATASETS.get("reverse_words")(n=args.prompts, seed=0)
    tok.padding_side = "left"
    batch = tok([r["prompt"] for r in records], return_tensors="pt", padding=True).to(device)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        greedy=args.greedy,
        num_samples=args.group,
    )
    print(
        f"model {args.preset} ({count_parameters(model) / 1e6:.0f}M parameters, vocabulary {model.config.vocab_size}), "
        f"{device.type} {args.dtype}, {args.prompts} prompts x {args.group} samples, prompt width "
        f"{batch['input_ids'].shape[1]}, at most {args.max_new_tokens} new tokens, {'greedy' if args.greedy else 'T=1'}"
    )

    def call(engine: Any, seed: int) -> tuple[float, int, float]:
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        rollout = engine.generate(model, batch["input_ids"], batch["attention_mask"], params)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        return seconds, int(rollout.response_mask.sum()), peak

    runs: dict[str, list[tuple[float, int, float]]] = {}
    named = engines(device, args.compiled or device.type == "cuda")
    for engine in named.values():
        call(engine, 0)  # warm-up (and graph capture)
    for repeat in range(args.repeats):
        order = list(named) if repeat % 2 == 0 else list(named)[::-1]
        for name in order:
            runs.setdefault(name, []).append(call(named[name], repeat + 1))

    best = {name: max(tries, key=lambda r: r[1] / r[0]) for name, tries in runs.items()}
    base = best["hf"][1] / best["hf"][0]
    print(f"  {'engine':18s} {'s/call':>7s} {'tokens':>7s} {'tokens/s':>9s} {'vs hf':>6s} {'peak MB':>8s}")
    for name, (seconds, tokens, peak) in best.items():
        rate = tokens / seconds
        print(f"  {name:18s} {seconds:7.3f} {tokens:7d} {rate:9.1f} {rate / base:5.2f}x {peak:8.0f}")


if __name__ == "__main__":
    main()
