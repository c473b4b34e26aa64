"""`alignkit compare`: every policy of a pipeline answers the same held-out prompts, scored by the true reward.

For the baseline (the SFT policy every method starts from), best-of-n samples of it picked by the reward
model, and each compared stage's trained policy (and its saved step checkpoints), the same prompts are
answered by sampling (temperature 1 by default: the KL estimate needs samples of the policy itself), and
each answer gets

- the true reward (`compare.true_reward`, e.g. the testbed's exact sentiment score),
- the KL to the baseline, sum_t log pi(y_t | ...) - log pi_ref(y_t | ...) over the response: an unbiased
  Monte Carlo estimate of KL(pi || pi_ref) per response,
- the reward model's score, when the pipeline has a reward-model stage.

Written to `<logging.root>/<pipeline>/compare/version_N/`: summary.md and summary.csv, frontier.png (true
reward vs KL, the plot of Rafailov et al. 2023, fig. 2) and reward_vs_time.png, results.json, samples.jsonl,
and tensorboard/<stage>/ with each stage's training events plus `compare/*` tags, so one `tensorboard
--logdir` shows one run per method with identical tags.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignkit.pipeline import CompareSpec, Pipeline, run_pipeline
from alignkit.rundir import next_version, read_run_record, step_checkpoints
from alignkit.stats import mean_se

COMPARE_DIR = "compare"
TAGS = ("compare/reward/true", "compare/kl/ref", "compare/reward/model", "compare/response/length")


@dataclass
class Point:
    """One policy's answers to the held-out prompts, summarised."""

    method: str
    stage: str
    algorithm: str
    step: int  # the run's step (iterations for online methods); best-of-n: n
    true_reward: float
    true_reward_se: float
    kl: float
    kl_se: float
    rm_score: float | None
    length: float
    train_time_s: float | None  # training time of the run up to this point
    peak_mem_mb: float | None = None
    final: bool = True


@dataclass
class CompareResult:
    out_dir: Path
    points: list[Point] = field(default_factory=list)

    def finals(self) -> list[Point]:
        return [p for p in self.points if p.final]


class Evaluator:
    """Samples a policy's answers to the fixed prompts and scores them (true reward, KL, reward model)."""

    def __init__(self, spec: CompareSpec, tokenizer: Any, reference: Any, reward_model: Any, device: Any) -> None:
        from alignkit.data import Collator, DataSpec, build_datasets
        from alignkit.rewards.sources import build_source

        self.spec, self.tokenizer, self.device = spec, tokenizer, device
        self.reference = reference.to(device).eval().requires_grad_(False)
        self.reward_model = reward_model
        self.true_reward = build_source(spec.true_reward, tokenizer).to(device)
        data = DataSpec(train=spec.prompts, max_length=spec.max_prompt_length + 1)
        prompts, _ = build_datasets(data, "prompt", tokenizer, seed=spec.seed)
        collate = Collator("prompt", tokenizer.pad_token_id)
        rows = list(prompts)
        size = spec.micro_batch_size
        self.batches = [collate(rows[i : i + size]) for i in range(0, len(rows), size)]
        self.num_prompts = len(rows)

    def answer(self, policy: Any, num_samples: int) -> dict[str, Any]:
        """Per response: true reward, KL to the reference, RM score, length, text; responses grouped by prompt."""
        import torch

        from alignkit.rewards import RewardInputs
        from alignkit.rollout import generate, score

        spec = self.spec
        policy = policy.to(self.device).eval()
        torch.manual_seed(spec.seed)  # every policy answers with the same random stream
        out: dict[str, list[Any]] = {k: [] for k in ("true", "kl", "rm", "length", "prompt", "response")}
        with torch.no_grad():
            for batch in self.batches:
                rollout = generate(
                    policy,
                    batch["prompt_input_ids"].to(self.device),
                    batch["prompt_attention_mask"].to(self.device),
                    max_new_tokens=spec.max_new_tokens,
                    eos_token_id=self.tokenizer.eos_token_id,
                    pad_token_id=self.tokenizer.pad_token_id,
                    temperature=spec.temperature,
                    num_samples=num_samples,
                )
                logps = score(policy, rollout, temperature=spec.temperature)[0]
                ref = score(self.reference, rollout, temperature=spec.temperature)[0]
                inputs = RewardInputs.from_rollout(self.tokenizer, rollout, batch["metadata"], num_samples)
                out["true"].append(self.true_reward(inputs)[0].cpu())
                out["kl"].append((logps - ref).sum(-1).cpu())
                if self.reward_model is not None:
                    out["rm"].append(self.reward_model(inputs)[0].cpu())
                out["length"].append(rollout.response_lengths.cpu())
                out["prompt"] += inputs.prompts
                out["response"] += inputs.responses
        tensors = {k: torch.cat(v) if v else None for k, v in out.items() if k not in ("prompt", "response")}
        return {**tensors, "prompt": out["prompt"], "response": out["response"]}

    def point(self, answers: dict[str, Any], **info: Any) -> Point:
        reward, reward_se = mean_se(answers["true"])
        kl, kl_se = mean_se(answers["kl"])
        rm = float(answers["rm"].mean()) if answers["rm"] is not None else None
        return Point(
            true_reward=reward,
            true_reward_se=reward_se,
            kl=kl,
            kl_se=kl_se,
            rm_score=rm,
            length=float(answers["length"].mean()),
            **info,
        )


def best_of_n(answers: dict[str, Any], ns: list[int], per_prompt: int, **info: Any) -> list[Point]:
    """Best-of-n points from `per_prompt` >= max(ns) answers per prompt: the first n, the RM's favourite kept.

    The KL of best-of-n to the sampler is log n - (n - 1) / n (Stiennon et al. 2020, appendix G.3).
    """
    true = answers["true"].view(-1, per_prompt)
    rm = answers["rm"].view(-1, per_prompt)
    length = answers["length"].view(-1, per_prompt)
    points = []
    for n in sorted(set(ns)):
        pick = rm[:, :n].argmax(-1, keepdim=True)
        reward, reward_se = mean_se(true.gather(1, pick).squeeze(1))
        points.append(
            Point(
                method=f"best-of-{n}",
                step=n,
                true_reward=reward,
                true_reward_se=reward_se,
                kl=math.log(n) - (n - 1) / n,
                kl_se=0.0,
                rm_score=float(rm.gather(1, pick).mean()),
                length=float(length.gather(1, pick).float().mean()),
                final=n == max(ns),
                **info,
            )
        )
    return points


def _load_policy_weights(model: Any, ckpt: Path) -> Any:
    """A copy of `model` with the `policy.*` weights of a Lightning checkpoint."""
    import copy

    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    out = copy.deepcopy(model)
    out.load_state_dict(weights)
    return out


def _copy_events(run: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for events in run.glob("events.out.tfevents.*"):
        shutil.copy2(events, dest / events.name)


def run_compare(pipeline: Pipeline, log: Callable[[str], None] = print) -> CompareResult:
    """Run (or reuse) what the comparison needs, evaluate every policy, write table, figures and TensorBoard."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from alignkit.console import open_log_file
    from alignkit.models import ModelSpec, build_causal_lm, load_tokenizer
    from alignkit.rewards.sources import build_source
    from alignkit.rewards.spec import ModelSourceSpec

    spec: CompareSpec = pipeline.compare
    names = spec.run_names(pipeline)
    rm_stage = spec.reward_stage(pipeline)
    runs = run_pipeline(pipeline, only=spec.needed(pipeline), log=log)
    out = next_version(pipeline.root / COMPARE_DIR)
    out.mkdir(parents=True)
    open_log_file(out, name="compare.log")  # the evaluation's library logs, under `with_run_output` (the CLI)
    result = CompareResult(out)

    baseline_path = runs[spec.baseline] / "hf" / "policy"
    tokenizer = load_tokenizer(ModelSpec(path=str(baseline_path)))
    baseline_cfg = pipeline.stages[spec.baseline].config
    use_cuda = torch.cuda.is_available() and baseline_cfg.hardware.accelerator in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if use_cuda else "cpu")
    reference = build_causal_lm(ModelSpec(path=str(baseline_path)), tokenizer)
    reward_model = None
    if rm_stage is not None:
        rm_spec = ModelSourceSpec(model=ModelSpec(path=str(runs[rm_stage] / "hf" / "reward_model")))
        reward_model = build_source(rm_spec, tokenizer).to(device).eval()
    evaluator = Evaluator(spec, tokenizer, reference, reward_model, device)
    log(
        f"[compare] {evaluator.num_prompts} held-out prompts x {spec.samples_per_prompt} samples, "
        f"{len(names)} methods, on {device}"
    )
    samples: list[dict[str, Any]] = []

    def keep_samples(method: str, answers: dict[str, Any], per_prompt: int) -> None:
        for i in range(0, min(len(answers["prompt"]), 3 * per_prompt), per_prompt):
            samples.append(
                {
                    "method": method,
                    "prompt": answers["prompt"][i],
                    "response": answers["response"][i],
                    "true_reward": float(answers["true"][i]),
                }
            )

    tb_root = out / "tensorboard"

    def record(stage: str, points: list[Point], started: float | None) -> None:
        with SummaryWriter(str(tb_root / stage)) as writer:
            for p in points:
                # wall time = when the run reached this point, so TensorBoard's "relative" axis is training time
                when = started + p.train_time_s if started is not None and p.train_time_s is not None else None
                values = (p.true_reward, p.kl, p.rm_score, p.length)
                for tag, value in zip(TAGS, values, strict=True):
                    if value is not None:
                        writer.add_scalar(tag, value, p.step, walltime=when)

    # the baseline, and best-of-n from its samples
    base_status = read_run_record(runs[spec.baseline])
    base_info = {"stage": spec.baseline, "algorithm": pipeline.stages[spec.baseline].algorithm}
    per_prompt = max([spec.samples_per_prompt, *(spec.best_of_n if reward_model is not None else [])])
    t0 = time.perf_counter()
    answers = evaluator.answer(reference, per_prompt)
    log(f"[compare] {spec.baseline}: {per_prompt} samples per prompt in {time.perf_counter() - t0:.1f}s")
    # the baseline row uses as many samples per prompt as every other row: the first of each prompt's
    first = {
        k: v.view(-1, per_prompt)[:, : spec.samples_per_prompt].reshape(-1) if v is not None else None
        for k, v in answers.items()
        if k not in ("prompt", "response")
    }
    base = evaluator.point(
        first,
        method=spec.baseline,
        step=int(base_status.get("global_step", 0)),
        train_time_s=base_status.get("wall_time_s"),
        peak_mem_mb=_peak(base_status),
        **base_info,
    )
    result.points.append(base)
    keep_samples(spec.baseline, answers, per_prompt)
    if reward_model is not None and spec.best_of_n:
        result.points += best_of_n(
            answers, spec.best_of_n, per_prompt, stage=spec.baseline, algorithm="best_of_n", train_time_s=None
        )
    _copy_events(runs[spec.baseline], tb_root / spec.baseline)
    if rm_stage is not None:
        _copy_events(runs[rm_stage], tb_root / rm_stage)

    for name in names:
        run, stage = runs[name], pipeline.stages[name]
        status = read_run_record(run)
        updates = stage.config.algorithm.updates_per_step()
        final_policy = build_causal_lm(ModelSpec(path=str(run / "hf" / "policy")), tokenizer)
        info = {"stage": name, "algorithm": stage.algorithm}
        started = status.get("started")
        points = []
        if spec.checkpoints:
            # a sharded (FSDP) checkpoint is a directory: not read here
            for step, ckpt in [(s, c) for s, c in step_checkpoints(run / "checkpoints") if c.is_file()]:
                if step // updates >= int(status.get("global_step", 0)):
                    continue  # the final model is evaluated below
                answers = evaluator.answer(_load_policy_weights(final_policy, ckpt), spec.samples_per_prompt)
                elapsed = ckpt.stat().st_mtime - started if started else None
                points.append(
                    evaluator.point(
                        answers, method=name, step=step // updates, train_time_s=elapsed, final=False, **info
                    )
                )
        t0 = time.perf_counter()
        answers = evaluator.answer(final_policy, spec.samples_per_prompt)
        final = evaluator.point(
            answers,
            method=name,
            step=int(status.get("global_step", 0)),
            train_time_s=status.get("wall_time_s"),
            peak_mem_mb=_peak(status),
            **info,
        )
        points.append(final)
        keep_samples(name, answers, spec.samples_per_prompt)
        log(
            f"[compare] {name}: true reward {final.true_reward:+.3f}, KL {final.kl:.2f} "
            f"({len(points)} points, {time.perf_counter() - t0:.1f}s for the final one)"
        )
        _copy_events(run, tb_root / name)
        record(name, [Point(**{**asdict(base), "final": False, "step": 0, "train_time_s": 0.0}), *points], started)
        result.points += points
    record(spec.baseline, [base], base_status.get("started"))

    write_table(result, base, evaluator.num_prompts, spec)
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (out / "results.json").write_text(
        json.dumps(
            {
                "pipeline": pipeline.source,
                "runs": {k: str(v) for k, v in runs.items()},
                "prompts": evaluator.num_prompts,
                "spec": spec.model_dump(mode="json"),
                "points": [asdict(p) for p in result.points],
            },
            indent=2,
        )
        + "\n"
    )
    plot(result, base, out)
    return result


def _peak(status: dict[str, Any]) -> float | None:
    value = status.get("peak_cuda_mb", status.get("peak_rss_mb"))
    return float(value) if value is not None else None


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


COLUMNS = (
    "method",
    "algorithm",
    "step",
    "true_reward",
    "true_reward_se",
    "delta_vs_baseline",
    "kl",
    "kl_se",
    "rm_score",
    "length",
    "train_time_s",
    "peak_mem_mb",
)


def write_table(result: CompareResult, base: Point, num_prompts: int, spec: CompareSpec) -> None:
    """summary.md (final points) and summary.csv (every point, checkpoints included)."""
    out = result.out_dir
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, "final"])
        for p in result.points:
            row = asdict(p)
            row["delta_vs_baseline"] = p.true_reward - base.true_reward
            writer.writerow([row[c] for c in COLUMNS] + [p.final])
    lines = [
        f"True reward, KL to `{base.stage}` and reward-model score on {num_prompts} held-out prompts x "
        f"{spec.samples_per_prompt} samples (temperature {spec.temperature}); ± is one standard error.",
        "",
        "| method | true reward | vs " + base.method + " | KL (nats) | RM score | length | train time | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result.finals():
        delta = p.true_reward - base.true_reward
        lines.append(
            f"| {p.method} | {p.true_reward:+.3f} ± {p.true_reward_se:.3f} | "
            f"{'–' if p is base else f'{delta:+.3f}'} | {p.kl:.2f} | {_fmt(p.rm_score)} | {p.length:.1f} | "
            f"{_fmt(p.train_time_s, 0, ' s')} | {_fmt(p.peak_mem_mb, 0, ' MB')} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def plot(result: CompareResult, base: Point, out: Path) -> None:
    """frontier.png (true reward vs KL) and reward_vs_time.png (true reward vs training time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [p.method for p in result.finals() if p.stage != base.stage and p.algorithm != "best_of_n"]
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}

    def curve(method: str) -> list[Point]:
        return sorted((p for p in result.points if p.method == method), key=lambda p: p.step)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    bon = [p for p in result.points if p.algorithm == "best_of_n"]
    if bon:
        ax.plot([p.kl for p in bon], [p.true_reward for p in bon], "k--", lw=1, marker=".", label="best-of-n")
        for p in bon:
            ax.annotate(str(p.step), (p.kl, p.true_reward), textcoords="offset points", xytext=(3, -9), fontsize=7)
    ax.errorbar([0], [base.true_reward], yerr=[base.true_reward_se], fmt="ks", label=f"{base.method} (start)")
    for m in methods:
        pts = curve(m)
        xs, ys = [0.0, *(p.kl for p in pts)], [base.true_reward, *(p.true_reward for p in pts)]
        ax.plot(xs, ys, "-", color=colors[m], alpha=0.5, lw=1)
        last = pts[-1]
        ax.errorbar([last.kl], [last.true_reward], yerr=[last.true_reward_se], fmt="o", color=colors[m], label=m)
    _finish(
        fig,
        ax,
        "KL(policy || start) per response, nats",
        "Reward vs KL: lines follow each run's checkpoints",
        out / "frontier.png",
    )

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhline(base.true_reward, color="k", ls=":", lw=1, label=f"{base.method} (start)")
    for m in methods:
        pts = [p for p in curve(m) if p.train_time_s is not None]
        if not pts:
            continue
        ax.plot(
            [0.0, *(p.train_time_s for p in pts)],
            [base.true_reward, *(p.true_reward for p in pts)],
            "-o",
            color=colors[m],
            ms=3,
            lw=1,
            label=m,
        )
    _finish(fig, ax, "training wall time of the stage, s", "Reward vs training time", out / "reward_vs_time.png")


def _finish(fig: Any, ax: Any, xlabel: str, title: str, path: Path) -> None:
    """Labels, grid and legend of a true-reward figure, saved to `path` and closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("true reward (held-out prompts)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
