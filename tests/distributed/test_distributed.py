"""DDP and FSDP2 on two CPU processes (gloo), through the CLI as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SFT = """
name: dist_sft
algorithm: {name: sft}
policy: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}
data: {train: {generator: reverse_words, args: {n: 64}}, eval_fraction: 0.25, max_length: 48}
trainer: {max_steps: 4, prompts_per_step: 8, micro_batch_size: 2, optimizer: {lr: 1.0e-2}}
checkpoint: {every_n_steps: 2}
logging: {progress_bar: false}
"""

RM = """
name: dist_rm
algorithm: {name: reward_model}
reward_model: {architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}
data: {train: {generator: sentiment_pairs, args: {n: 32}}, eval_fraction: 0.25, max_length: 64}
trainer: {max_steps: 2, prompts_per_step: 4, micro_batch_size: 2}
logging: {progress_bar: false}
"""

OFFLINE = """
name: dist_offline
algorithm: {name: ALGO}
policy: {architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}
data: {train: {generator: sentiment_pairs, args: {n: 32}}, eval_fraction: 0.25, max_length: 64}
trainer: {max_steps: 2, prompts_per_step: 8, micro_batch_size: 2}
logging: {progress_bar: false}
"""


def alignkit(tmp: Path, text: str, *overrides: str, launcher: str = "torchrun") -> subprocess.CompletedProcess[str]:
    """`alignkit run` on two processes, as a user launches it. `torchrun` starts both at once; `lightning` starts
    one, which Lightning's launcher re-runs as rank 1 once rank 0 has built everything, so the two imports and
    builds (~8 s each here) run one after the other. One test keeps the second path; the others save the wait."""
    cfg = tmp / "cfg.yaml"
    cfg.write_text(text)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = ["-m", "alignkit", "run", str(cfg), f"logging.root={tmp / 'runs'}", *overrides]
    if launcher == "torchrun":
        run = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *run]
    cmd = [sys.executable, *run]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.mark.parametrize(
    "hardware",
    [
        ["hardware.preset=ddp-cpu-2"],
        # both FSDP options in one run (each only changes how blocks are wrapped); plain FSDP: the resume test
        [
            "hardware.preset=fsdp-cpu-2",
            "hardware.activation_checkpointing=true",
            "hardware.fsdp.reshard_after_forward=false",
        ],
    ],
    ids=["ddp", "fsdp-activation-checkpointing-zero2"],
)
def test_sft_trains_on_two_processes(tmp_path: Path, hardware: list[str]) -> None:
    # DDP through Lightning's own launcher (`alignkit run` started once), the rest of the file through torchrun
    launcher = "lightning" if hardware == ["hardware.preset=ddp-cpu-2"] else "torchrun"
    alignkit(tmp_path, SFT, *hardware, launcher=launcher)
    assert_complete_sft_run(tmp_path)


def assert_complete_sft_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "dist_sft" / "version_0"
    assert not (tmp_path / "runs" / "dist_sft" / "version_1").exists()  # rank 1 used rank 0's directory
    record = status(run_dir)
    assert record["status"] == "finished" and record["global_step"] == 4
    assert torch.isfinite(torch.tensor(record["metrics"]["eval/loss"]))
    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf" / "policy")  # gathered full weights
    assert sum(p.numel() for p in model.parameters()) > 0


def test_fsdp_checkpoint_loads_back_and_resumes_exactly(tmp_path: Path) -> None:
    """A sharded (distributed) checkpoint restores model, optimizer and data position: 2 + 2 steps == 4 steps."""
    alignkit(tmp_path, SFT, "hardware.preset=fsdp-cpu-2")
    assert_complete_sft_run(tmp_path)
    straight = tmp_path / "runs" / "dist_sft" / "version_0"
    ckpt = straight / "checkpoints" / "step000002.ckpt"
    assert ckpt.is_dir() and any(ckpt.glob("*.distcp"))  # one shard file per rank
    alignkit(tmp_path, SFT, "hardware.preset=fsdp-cpu-2", f"checkpoint.resume={ckpt}")
    resumed = tmp_path / "runs" / "dist_sft" / "version_1"  # the straight run had finished: a new version
    a, b = status(straight)["metrics"], status(resumed)["metrics"]
    assert status(resumed)["global_step"] == 4
    assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5)
    assert b["eval/loss"] == pytest.approx(a["eval/loss"], rel=1e-5)


def test_reward_model_trains_under_ddp(tmp_path: Path) -> None:
    alignkit(tmp_path, RM, "hardware.preset=ddp-cpu-2")
    run_dir = tmp_path / "runs" / "dist_rm" / "version_0"
    assert status(run_dir)["status"] == "finished"
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "hf" / "reward_model")
    assert model.config.num_labels == 1


@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        # the precompute gathered across ranks with KTO's z0 over both ranks; under FSDP (the live reference under
        # DDP: the LoRA test below, where it is the policy with its adapters off)
        ("kto", ["algorithm.precompute_ref_logps=true"]),
        ("dpo", ["algorithm.precompute_ref_logps=true", "hardware.preset=fsdp-cpu-2"]),
        # micro-batches to a token budget (as many on each rank: FSDP gathers in every forward), packed rows
        # with shared prompts
        (
            "dpo",
            [
                "hardware.preset=fsdp-cpu-2",
                "trainer.max_tokens_per_micro_batch=150",
                "trainer.padding_free=true",
                "trainer.shared_prompts=true",
            ],
        ),
        # reference-free: the policy alone on each rank; ORPO with micro-batches to a token budget
        ("simpo", []),
        ("orpo", ["trainer.max_tokens_per_micro_batch=150"]),
        ("cpo", []),
    ],
    ids=[
        "kto-precomputed",
        "dpo-fsdp-precomputed",
        "dpo-fsdp-token-budget-shared",
        "simpo",
        "orpo-token-budget",
        "cpo",
    ],
)
def test_offline_preference_trains_on_two_processes(tmp_path: Path, algorithm: str, extra: list[str]) -> None:
    """DDP (and FSDP): the reference copy, the precompute gathered across ranks, KTO's z0 over both ranks."""
    alignkit(tmp_path, OFFLINE.replace("ALGO", algorithm), "hardware.preset=ddp-cpu-2", *extra)
    record = status(tmp_path / "runs" / "dist_offline" / "version_0")
    assert record["status"] == "finished" and record["global_step"] == 2
    metrics = record["metrics"]
    assert 0.0 <= metrics["eval/rewards/accuracies"] <= 1.0
    assert torch.isfinite(torch.tensor([metrics["train/loss"], metrics["eval/loss"]])).all()
    if algorithm == "kto":
        assert metrics["train/kl/z0"] >= 0.0


ONLINE = """
name: dist_online
algorithm: {name: ALGO, max_new_tokens: 6, samples_per_prompt: 2}
policy: {architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}
reward: {source: {kind: rule, name: length_target, args: {target: 4}}, normalize: batch}
data: {train: {generator: reverse_words, args: {n: 32}}, eval_fraction: 0.25, max_length: 48}
trainer: {max_steps: 2, prompts_per_step: 4, micro_batch_size: 2}
logging: {progress_bar: false}
"""


@pytest.mark.parametrize(
    ("algorithm", "hardware"),
    # grpo: in the resume test below; reinforce is grpo's loss with the reward as the advantage
    [
        (name, "ddp-cpu-2")
        for name in ("ppo", "remax", "rloo", "reinforce_pp", "dapo", "rejection_sampling", "online_dpo")
    ]
    + [("ppo", "fsdp-cpu-2")],
)
def test_online_algorithms_train_on_two_processes(tmp_path: Path, algorithm: str, hardware: str) -> None:
    """Each rank samples its share of prompts (FSDP: generation in step across ranks, responses of different
    lengths), the reward is normalised over both ranks, and the step's loss is shared out over both. PPO under
    FSDP trains LoRA adapters: its default critic takes them too, its new value head trained in full."""
    lora = ["policy.lora.rank=4"] if hardware.startswith("fsdp") else []
    alignkit(tmp_path, ONLINE.replace("ALGO", algorithm), f"hardware.preset={hardware}", *lora)
    run_dir = tmp_path / "runs" / "dist_online" / "version_0"
    assert_complete_online_run(run_dir, steps=2)
    if lora:
        assert (run_dir / "hf" / "critic_adapter" / "adapter_config.json").exists()


def assert_complete_online_run(run_dir: Path, steps: int) -> None:
    record = status(run_dir)
    assert record["status"] == "finished" and record["global_step"] == steps
    metrics = record["metrics"]
    assert {"train/reward/mean", "train/kl/ref", "eval/reward/mean"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


@pytest.mark.parametrize("hardware", ["fsdp-cpu-2"])  # DDP gathers and restores the same way, into one file
def test_online_resume_on_two_processes_samples_what_the_straight_run_did(tmp_path: Path, hardware: str) -> None:
    """GRPO, 4 iterations straight == 2, then a resume from the step-2 checkpoint: the same weights bit for
    bit, because the checkpoint holds both ranks' random states (gathered; under FSDP in its metadata)."""
    from safetensors.torch import load_file

    from alignkit.checkpoints import SHARDED_META

    text = ONLINE.replace("ALGO", "grpo").replace("max_steps: 2", "max_steps: 4")
    alignkit(tmp_path, text, f"hardware.preset={hardware}", "checkpoint.every_n_steps=2")
    straight = tmp_path / "runs" / "dist_online" / "version_0"
    assert_complete_online_run(straight, steps=4)
    ckpt = straight / "checkpoints" / "step000002.ckpt"
    saved = torch.load(ckpt / SHARDED_META if ckpt.is_dir() else ckpt, weights_only=True, map_location="cpu")
    ranks = next(v for k, v in saved["callbacks"].items() if k.startswith("RandomState"))["ranks"]
    assert len(ranks["torch"]) == 2  # one row per rank
    alignkit(tmp_path, text, f"hardware.preset={hardware}", f"checkpoint.resume={ckpt}")
    resumed = tmp_path / "runs" / "dist_online" / "version_1"
    assert status(resumed)["global_step"] == 4
    a, b = (load_file(run / "hf" / "policy" / "model.safetensors") for run in (straight, resumed))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


LORA_DPO = """
name: dist_lora
algorithm: {name: dpo}
policy: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2, lora: {rank: 4, alpha: 8}}
data: {train: {generator: sentiment_pairs, args: {n: 32}}, eval_fraction: 0.25, max_length: 64}
trainer: {max_steps: 2, prompts_per_step: 8, micro_batch_size: 2, log_every_n_steps: 1, optimizer: {lr: 5.0e-2}}
checkpoint: {every_n_steps: 1}
logging: {progress_bar: false}
"""


def test_lora_under_ddp_starts_at_log_2_and_exports_merged_and_adapter(tmp_path: Path) -> None:
    """The reference is the policy with its adapters off on each rank: DPO's first loss is exactly log 2; the
    merged export computes what the base with the PEFT adapter does."""
    from peft import PeftModel
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alignkit.models import ModelSpec, build_causal_lm, byte_tokenizer

    alignkit(tmp_path, LORA_DPO, "hardware.preset=ddp-cpu-2")
    run_dir = tmp_path / "runs" / "dist_lora" / "version_0"
    losses = [e.value for e in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")]
    assert losses[0] == pytest.approx(0.693147, abs=1e-6) and losses[1] != pytest.approx(0.693147, abs=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "hf" / "policy")
    base = build_causal_lm(ModelSpec(architecture="llama", hidden_size=32, num_layers=2, num_heads=2), byte_tokenizer())
    adapted = PeftModel.from_pretrained(base, run_dir / "hf" / "policy_adapter").eval()
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits)


def test_lora_under_fsdp_with_a_bf16_base_resumes_exactly(tmp_path: Path) -> None:
    """float32 adapters in bf16 blocks, a bf16 embedding trained in full beside them (modules_to_save): each FSDP
    unit's trainable parameters share one dtype. The sharded checkpoint holds the trained state only, and a
    resume from step 1 ends where the straight run did; the export is merged from gathered weights."""
    text = LORA_DPO.replace("lora: {", "dtype: bfloat16, lora: {modules_to_save: [embed_tokens], ")
    alignkit(tmp_path, text, "hardware.preset=fsdp-cpu-2")
    straight = tmp_path / "runs" / "dist_lora" / "version_0"
    ckpt = straight / "checkpoints" / "step000001.ckpt"
    assert ckpt.is_dir() and any(ckpt.glob("*.distcp"))
    alignkit(tmp_path, text, "hardware.preset=fsdp-cpu-2", f"checkpoint.resume={ckpt}")
    resumed = tmp_path / "runs" / "dist_lora" / "version_1"
    a, b = status(straight)["metrics"], status(resumed)["metrics"]
    assert status(resumed)["global_step"] == 2
    assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(resumed / "hf" / "policy")
    assert merged.dtype == torch.bfloat16 and (resumed / "hf" / "policy_adapter" / "adapter_model.safetensors").exists()
