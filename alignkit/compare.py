"""`alignkit compare`: every policy of a pipeline answers the same held-out prompts, scored by the true reward,
over every seed, with statistics that say what the seeds support.

For each pipeline seed (`compare.seeds`; one run when unset): the baseline (the SFT policy every method
starts from), best-of-n samples of it picked by the reward model, and each compared stage's trained policy
(and its saved step checkpoints) answer the same prompts by sampling (temperature 1 by default: the KL
estimate needs samples of the policy itself). Each answer gets

- the true reward (`compare.true_reward`, e.g. the testbed's exact sentiment score),
- the KL to that seed's baseline, sum_t log pi(y_t | ...) - log pi_ref(y_t | ...) over the response: an
  unbiased Monte Carlo estimate of KL(pi || pi_ref) per response,
- the reward model's score, when the pipeline has a reward-model stage.

Each policy's answers are averaged per prompt, giving a [seeds x prompts] matrix per method; `alignkit.stats`
turns those into means, 95% bootstrap intervals (seeds, then prompts within a seed), interquartile means and
probabilities of improvement (Agarwal et al. 2021). Written to `<logging.root>/<pipeline>/compare/version_N/`:
summary.md and summary.csv, frontier.png, curves.png, improvement.png, reward_vs_time.png, results.json (every
point and per-prompt score), samples.jsonl, and tensorboard/ with one run per method and seed (`dpo/seed_0`,
training events plus `compare/*` tags) and one per method with the seed mean (`dpo/mean`).

With `compare.pass_at_k` (a true reward that says right or wrong, e.g. `exact_answer`), the baseline and each
method's final policy also draw `pass_at_k.samples` answers per prompt, whose correct count c gives each prompt's
unbiased pass@k (Chen et al. 2021), and one greedy answer per prompt: the question of Yue et al. 2025 ("Does
reinforcement learning really incentivize reasoning capacity beyond the base model?"), whether RL raises pass@1
only or the large-k end of the curve too. Summarised like the true reward, over all prompts and per value of the
prompts' `pass_at_k.by` column, and as the change from the baseline paired by seed and prompt: a Pass@k section in
summary.md, pass_at_k.csv, pass_at_k.png, pass_at_k_change.png, pass1_vs_kl.png and `eval/pass@k/*` TensorBoard
tags.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignkit.config.errors import ConfigError, Problem
from alignkit.pipeline import CompareSpec, Pipeline, PipelineResult, derive_seed, run_pipeline
from alignkit.rundir import next_version, read_run_record, step_checkpoints
from alignkit.stats import Summary, improvement_matrix, mean_se, pass_at_k, separable_ranking, summarize

COMPARE_DIR = "compare"
TAGS = ("compare/reward/true", "compare/kl/ref", "compare/reward/model", "compare/response/length")
BEST_OF = "best_of_n"
GREEDY = "greedy"  # the pass@k key of greedy pass@1; the sampled ones are keyed by k, "1", "2", ...
ALL = "all"  # the pass@k group of every prompt
PASS_TAG = "eval/pass@k"
_TAG_BREAKS = re.compile(r"[\s/]+")  # what would split a group label over levels of a TensorBoard tag


@dataclass
class Point:
    """One policy's answers to the held-out prompts in one seed's run, summarised."""

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
    seed: int | None = None  # the pipeline seed (None: a pipeline without compare.seeds)
    # per prompt, the mean over its samples: what the statistics over seeds resample
    per_prompt: dict[str, list[float]] = field(default_factory=dict, repr=False)
    # per prompt, pass@k keyed "greedy", "1", "2", ... (`pass_at_k_scores`); final policies with compare.pass_at_k
    pass_at_k: dict[str, list[float]] = field(default_factory=dict, repr=False)


@dataclass
class Row:
    """One method (or one checkpoint step of it) over every seed: the statistics the table and figures show."""

    method: str
    algorithm: str
    step: int
    final: bool
    seeds: list[int | None]
    reward: Summary  # true reward
    kl: Summary
    rm_score: float | None
    length: float
    train_time_s: float | None  # mean over seeds
    train_time_range: tuple[float, float] | None
    peak_mem_mb: float | None
    # group ("all", then each value of compare.pass_at_k.by) -> key ("greedy", "1", ...) -> pass@k over seeds
    pass_at_k: dict[str, dict[str, Summary]] = field(default_factory=dict)
    # the same, of the change from the baseline, paired by seed and prompt (`pass_at_k_changes`)
    pass_at_k_change: dict[str, dict[str, Summary]] = field(default_factory=dict)


@dataclass
class CompareResult:
    out_dir: Path
    points: list[Point] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    baseline: str = "sft"
    failed: dict[str, str] = field(default_factory=dict)  # pipeline runs that did not finish, with why
    # (methods, P, low, high) of the final policies: computed once, shown by the table and the heatmap
    improvement: tuple[list[str], Any, Any, Any] | None = None
    prompt_groups: list[str] | None = None  # each held-out prompt's value of compare.pass_at_k.by

    def finals(self) -> list[Point]:
        return [p for p in self.points if p.final]

    def final_rows(self) -> list[Row]:
        return [r for r in self.rows if r.final]

    def pass_at_k_rows(self) -> list[Row]:
        """The final rows with pass@k (the baseline and the trained methods), in the table's order."""
        return [r for r in self.final_rows() if r.pass_at_k]


class Evaluator:
    """Samples a policy's answers to the fixed prompts and scores them (true reward, KL, reward model)."""

    def __init__(self, spec: CompareSpec, tokenizer: Any, device: Any) -> None:
        from alignkit.data import Collator, DataSpec, build_datasets
        from alignkit.rewards.sources import build_source

        self.spec, self.tokenizer, self.device = spec, tokenizer, device
        self.reference: Any = None
        self.reward_model: Any = None
        self.sampling_seed = spec.seed
        self.true_reward = build_source(spec.true_reward, tokenizer).to(device)
        data = DataSpec(train=spec.prompts, max_length=spec.max_prompt_length + 1)
        prompts, _ = build_datasets(data, "prompt", tokenizer, seed=spec.seed)
        collate = Collator("prompt", tokenizer.pad_token_id)
        rows = list(prompts)
        size = spec.micro_batch_size
        self.batches = [collate(rows[i : i + size]) for i in range(0, len(rows), size)]
        self.num_prompts = len(rows)
        by = spec.pass_at_k.by if spec.pass_at_k is not None else None
        # the value of each prompt's `by` column, from the metadata its batch gives the rewards
        self.groups = group_labels([m for b in self.batches for m in b["metadata"]], by) if by else None

    def for_seed(self, reference: Any, reward_model: Any, seed: int | None) -> None:
        """The baseline and reward model of one pipeline seed, and its sampling stream."""
        self.reference = reference.to(self.device).eval().requires_grad_(False)
        self.reward_model = reward_model
        self.sampling_seed = derive_seed(self.spec.seed, seed or 0)

    def answer(self, policy: Any, num_samples: int, greedy: bool = False) -> dict[str, Any]:
        """Per response: true reward, KL to the reference, RM score, length, text; responses grouped by prompt.
        `greedy`: argmax answers instead of samples."""
        import torch

        from alignkit.rewards import RewardInputs
        from alignkit.rollout.engine import build_engine, reuses_logprobs
        from alignkit.rollout.rollout import SamplingParams, score

        spec = self.spec
        policy = policy.to(self.device).eval()
        engine = build_engine(spec.rollout)
        params = SamplingParams(
            max_new_tokens=spec.max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            temperature=spec.temperature,
            greedy=greedy,
            num_samples=num_samples,
        )
        # scored in eval mode, so only the weights' dtype decides whether the engine's log-probs are scoring's
        exact = next(policy.parameters()).dtype == torch.float32
        reuse = engine.returns_logprobs and reuses_logprobs(spec.rollout.reuse_logprobs, exact=exact)
        torch.manual_seed(self.sampling_seed)  # every policy of a seed answers with the same random stream
        out: dict[str, list[Any]] = {k: [] for k in ("true", "kl", "rm", "length", "prompt", "response")}
        with torch.no_grad():
            for batch in self.batches:
                ids, mask = (batch[k].to(self.device) for k in ("prompt_input_ids", "prompt_attention_mask"))
                rollout = engine.generate(policy, ids, mask, params)
                logps = rollout.logprobs if reuse else score(policy, rollout, temperature=spec.temperature)[0]
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

    def pass_at_k(self, policy: Any, answers: dict[str, Any], per_prompt_n: int) -> dict[str, list[float]]:
        """Each prompt's pass@k from the first `pass_at_k.samples` of its `per_prompt_n` sampled `answers`, and its
        greedy pass@1 from one more, argmax, answer (`pass_at_k_scores`); {} without compare.pass_at_k."""
        spec = self.spec.pass_at_k
        if spec is None:
            return {}
        true = first_answers(answers, per_prompt_n, spec.samples)["true"]
        greedy = self.answer(policy, 1, greedy=True)["true"] if spec.greedy else None
        return pass_at_k_scores(true, spec.samples, spec.k, spec.threshold, greedy)

    def point(self, answers: dict[str, Any], num_samples: int, **info: Any) -> Point:
        reward, reward_se = mean_se(answers["true"])
        kl, kl_se = mean_se(answers["kl"])
        rm = float(answers["rm"].mean()) if answers["rm"] is not None else None
        return Point(
            true_reward=reward,
            true_reward_se=reward_se,
            kl=kl,
            kl_se=kl_se,
            rm_score=rm,
            length=float(answers["length"].float().mean()),
            per_prompt=per_prompt(answers, num_samples),
            **info,
        )


def first_answers(answers: dict[str, Any], per_prompt_n: int, n: int) -> dict[str, Any]:
    """The first `n` of each prompt's `per_prompt_n` answers (answers are grouped by prompt), per score."""
    return {
        k: v.view(-1, per_prompt_n)[:, :n].reshape(-1) if v is not None else None
        for k, v in answers.items()
        if k not in ("prompt", "response")
    }


def pass_at_k_scores(
    true: Any, n: int, ks: Sequence[int], threshold: float, greedy: Any = None
) -> dict[str, list[float]]:
    """Per prompt, the unbiased pass@k for each k (`alignkit.stats.pass_at_k`, Chen et al. 2021) from the true
    rewards of its n sampled answers (`true`: [prompts * n], grouped by prompt), and greedy pass@1, 0 or 1, from
    one argmax answer each (`greedy`: [prompts], or None for none). An answer is correct when its true reward is
    at least `threshold`. Keyed "greedy" (first, when given), then str(k) in the order of `ks`."""
    # rewards arrive in float32, where weights that sum to the threshold can land an ulp below it
    # (0.01 + 0.78 + 0.21 = 0.99999994): within a float32 rounding of the threshold counts as reaching it
    least = threshold - 1e-6 * max(1.0, abs(threshold))
    correct = np.asarray(true, dtype=np.float64).reshape(-1, n) >= least
    out: dict[str, list[float]] = {}
    if greedy is not None:
        right = np.asarray(greedy, dtype=np.float64).reshape(-1) >= least
        if len(right) != len(correct):
            raise ValueError(f"pass_at_k_scores: {len(right)} greedy answers for {len(correct)} prompts; give one each")
        out[GREEDY] = right.astype(np.float64).tolist()
    counts = correct.sum(1)
    for k in ks:
        out[str(k)] = [pass_at_k(n, int(c), k) for c in counts]
    return out


def group_labels(metadata: list[dict[str, Any]], by: str) -> list[str]:
    """Each prompt's value of its column `by` as text: the group its pass@k also counts in."""
    columns = list(dict.fromkeys(c for row in metadata for c in row))
    if any(by not in row for row in metadata):
        raise ConfigError([_no_column(by, columns)])
    return [str(row[by]) for row in metadata]


def _no_column(by: str, columns: Iterable[str]) -> Problem:
    return Problem(
        "compare.pass_at_k.by",
        f"the held-out prompts (compare.prompts) have no column '{by}'; columns: {', '.join(columns)}; set "
        "compare.pass_at_k.by to one of them, or to null for no split",
    )


def group_order(labels: Iterable[str]) -> list[str]:
    """The distinct group labels, numbers inside them compared as numbers: `terms=2` before `terms=10`."""
    return sorted(set(labels), key=lambda s: [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", s))])


def per_prompt(answers: dict[str, Any], num_samples: int) -> dict[str, list[float]]:
    """Each prompt's mean over its `num_samples` answers (answers are grouped by prompt), per score."""
    out = {}
    for key in ("true", "kl", "rm", "length"):
        if answers.get(key) is not None:
            values = np.asarray(answers[key], dtype=np.float64).reshape(-1, num_samples)
            out[key] = values.mean(1).tolist()
    return out


def best_of_n(answers: dict[str, Any], ns: list[int], per_prompt_n: int, **info: Any) -> list[Point]:
    """Best-of-n points from `per_prompt_n` >= max(ns) answers per prompt: the first n, the RM's favourite kept.

    The KL of best-of-n to the sampler is log n - (n - 1) / n (Stiennon et al. 2020, appendix G.3).
    """
    true = answers["true"].view(-1, per_prompt_n)
    rm = answers["rm"].view(-1, per_prompt_n)
    length = answers["length"].view(-1, per_prompt_n)
    points = []
    for n in sorted(set(ns)):
        pick = rm[:, :n].argmax(-1, keepdim=True)
        picked = {"true": true.gather(1, pick).squeeze(1), "rm": rm.gather(1, pick).squeeze(1)}
        picked["length"] = length.gather(1, pick).squeeze(1).float()
        reward, reward_se = mean_se(picked["true"])
        kl = math.log(n) - (n - 1) / n
        points.append(
            Point(
                method=f"best-of-{n}",
                step=n,
                true_reward=reward,
                true_reward_se=reward_se,
                kl=kl,
                kl_se=0.0,
                rm_score=float(picked["rm"].mean()),
                length=float(picked["length"].mean()),
                final=n == max(ns),
                per_prompt={**{k: v.double().tolist() for k, v in picked.items()}, "kl": [kl] * len(true)},
                **info,
            )
        )
    return points


def _load_policy_weights(model: Any, ckpt: Path, spec: Any = None) -> Any:
    """A copy of `model` with the `policy.*` weights of a Lightning checkpoint; for a policy that trained LoRA
    adapters (its checkpoint holds them alone), its base rebuilt from `spec` with the checkpoint's adapters."""
    import copy

    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    if spec is not None and spec.lora is not None:
        from alignkit.checkpoints import trained_state_loaded
        from alignkit.models import build_causal_lm, load_tokenizer
        from alignkit.models.lora import apply_lora

        out = apply_lora(build_causal_lm(spec, load_tokenizer(spec)), spec.lora, scalar=False, seed=spec.init_seed)
        try:
            trained_state_loaded(out, out.load_state_dict(weights, strict=False))
        except RuntimeError as err:
            raise RuntimeError(
                f"{ckpt}: its adapters do not match the policy section of the stage's config: {err}"
            ) from err
        return out.eval()
    out = copy.deepcopy(model)
    out.load_state_dict(weights)
    return out


def _copy_events(run: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for events in run.glob("events.out.tfevents.*"):
        shutil.copy2(events, dest / events.name)


def _peak(status: dict[str, Any]) -> float | None:
    value = status.get("peak_cuda_mb", status.get("peak_rss_mb"))
    return float(value) if value is not None else None


def run_compare(
    pipeline: Pipeline,
    log: Callable[[str], None] = print,
    *,
    jobs: int = 1,
    executor: str = "local",
    slurm: dict[str, Any] | None = None,
) -> CompareResult:
    """Run (or reuse) what the comparison needs, evaluate every policy of every seed, write the statistics,
    table, figures and TensorBoard runs. Seeds whose baseline did not finish are left out; methods that did not
    finish in a seed count one seed fewer (the table's n says so)."""
    import torch

    from alignkit.console import open_log_file
    from alignkit.models import ModelSpec, load_tokenizer

    spec: CompareSpec = pipeline.compare
    if spec.pass_at_k is not None and spec.pass_at_k.by is not None:
        from alignkit.data.sources import source_columns

        columns = source_columns(spec.prompts)  # checked before any stage trains, from the raw rows
        if spec.pass_at_k.by not in columns:
            raise ConfigError([_no_column(spec.pass_at_k.by, columns)], source=pipeline.source)
    done = run_pipeline(pipeline, only=spec.needed(pipeline), log=log, jobs=jobs, executor=executor, slurm=slurm)
    seeds: list[int | None] = list(pipeline.seeds or [None])
    usable = [s for s in seeds if pipeline.node(spec.baseline, s).label in done.runs]
    if not usable:
        done.check()
    for seed in (s for s in seeds if s not in usable):
        log(f"[compare] seed {seed} left out: its {spec.baseline} run did not finish")
    out = next_version(pipeline.root / COMPARE_DIR)
    out.mkdir(parents=True)
    open_log_file(out, name="compare.log")  # the evaluation's library logs, under `with_run_output` (the CLI)
    result = CompareResult(out, baseline=spec.baseline, failed=dict(done.failed))

    first = done.runs[pipeline.node(spec.baseline, usable[0]).label]
    tokenizer = load_tokenizer(ModelSpec(path=str(first / "hf" / "policy")))
    baseline_cfg = pipeline.stages[spec.baseline].config
    use_cuda = torch.cuda.is_available() and baseline_cfg.hardware.accelerator in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if use_cuda else "cpu")
    evaluator = Evaluator(spec, tokenizer, device)
    names = spec.run_names(pipeline)
    pass_k = f" (pass@k: {spec.pass_at_k.samples} for final policies)" if spec.pass_at_k is not None else ""
    log(
        f"[compare] {evaluator.num_prompts} held-out prompts x {spec.samples_per_prompt} samples{pass_k}, "
        f"{len(names)} methods x {len(seeds)} seed(s), on {device}"
    )
    samples: list[dict[str, Any]] = []
    for seed in usable:
        result.points += _evaluate_seed(pipeline, done, evaluator, seed, samples, log)
    result.prompt_groups = evaluator.groups
    result.rows = aggregate(result.points, spec, evaluator.groups)
    result.improvement = _improvement(result, spec)
    write_table(result, evaluator.num_prompts, spec, pipeline)
    write_tensorboard(result, pipeline, done)
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (out / "results.json").write_text(
        json.dumps(
            {
                "pipeline": pipeline.source,
                "seeds": seeds,
                "shared": sorted(pipeline.shared),
                "runs": {k: str(v) for k, v in done.runs.items()},
                "failed": done.failed,
                "prompts": evaluator.num_prompts,
                "prompt_groups": evaluator.groups,
                "spec": spec.model_dump(mode="json"),
                "rows": [_row_json(r) for r in result.rows],
                "points": [asdict(p) for p in result.points],
            },
            indent=1,
        )
        + "\n"
    )
    plot(result, out, spec)
    return result


def _evaluate_seed(
    pipeline: Pipeline,
    done: PipelineResult,
    evaluator: Evaluator,
    seed: int | None,
    samples: list[dict[str, Any]],
    log: Callable[[str], None],
) -> list[Point]:
    """Every point of one pipeline seed: its baseline, best-of-n and each method's checkpoints and final policy."""
    from alignkit.models import ModelSpec, build_causal_lm
    from alignkit.rewards.sources import build_source
    from alignkit.rewards.spec import ModelSourceSpec

    spec: CompareSpec = pipeline.compare
    tag = "[compare]" if seed is None else f"[compare seed {seed}]"
    base_run = done.runs[pipeline.node(spec.baseline, seed).label]
    tokenizer = evaluator.tokenizer
    reference = build_causal_lm(ModelSpec(path=str(base_run / "hf" / "policy")), tokenizer)
    rm_stage = spec.reward_stage(pipeline)
    reward_model = None
    rm_label = pipeline.node(rm_stage, seed).label if rm_stage is not None else None
    if rm_label is not None and rm_label in done.runs:
        rm_spec = ModelSourceSpec(model=ModelSpec(path=str(done.runs[rm_label] / "hf" / "reward_model")))
        reward_model = build_source(rm_spec, tokenizer).to(evaluator.device).eval()
    evaluator.for_seed(reference, reward_model, seed)

    def keep_samples(method: str, answers: dict[str, Any], per_prompt_n: int) -> None:
        for i in range(0, min(len(answers["prompt"]), 3 * per_prompt_n), per_prompt_n):
            samples.append(
                {
                    "method": method,
                    "seed": seed,
                    "prompt": answers["prompt"][i],
                    "response": answers["response"][i],
                    "true_reward": float(answers["true"][i]),
                }
            )

    points: list[Point] = []
    base_status = read_run_record(base_run)
    n_best = spec.best_of_n if reward_model is not None else []
    # one draw serves every use: the regular row reads the first samples_per_prompt of each prompt's answers,
    # best-of-n the first n, pass@k the first pass_at_k.samples
    pass_n = spec.pass_at_k.samples if spec.pass_at_k is not None else 0
    per_prompt_n = max([spec.samples_per_prompt, *n_best, pass_n])
    answers = evaluator.answer(reference, per_prompt_n)
    # the baseline row uses as many samples per prompt as every other row: the first of each prompt's
    first = first_answers(answers, per_prompt_n, spec.samples_per_prompt)
    info = {"stage": spec.baseline, "algorithm": pipeline.stages[spec.baseline].algorithm, "seed": seed}
    base = evaluator.point(
        first,
        spec.samples_per_prompt,
        method=spec.baseline,
        step=0,
        train_time_s=base_status.get("wall_time_s"),
        peak_mem_mb=_peak(base_status),
        pass_at_k=evaluator.pass_at_k(reference, answers, per_prompt_n),
        **info,
    )
    points.append(base)
    if base.pass_at_k:
        log(f"{tag} {spec.baseline}: true reward {base.true_reward:+.3f}{pass_at_k_note(base.pass_at_k)}")
    keep_samples(spec.baseline, answers, per_prompt_n)
    if n_best:
        points += best_of_n(
            answers, n_best, per_prompt_n, stage=spec.baseline, algorithm=BEST_OF, train_time_s=None, seed=seed
        )
    for name in spec.run_names(pipeline):
        label = pipeline.node(name, seed).label
        if label not in done.runs:
            why = done.failed.get(label, "did not run").split(":")[0]
            log(f"{tag} {name}: left out ({why}; see above)")
            continue
        run, stage = done.runs[label], pipeline.stages[name]
        status = read_run_record(run)
        updates = stage.config.algorithm.updates_per_step()
        final_policy = build_causal_lm(ModelSpec(path=str(run / "hf" / "policy")), tokenizer)
        info = {"stage": name, "algorithm": stage.algorithm, "seed": seed}
        started = status.get("started")
        t0 = time.perf_counter()
        if spec.checkpoints:
            # no pass@k here: its pass_at_k.samples answers per prompt (64 by default) cost that many over
            # samples_per_prompt times a checkpoint's evaluation (16x by default), for every checkpoint of every
            # seed; the final policy's curve against the baseline's is what says whether RL widened what it solves
            # a sharded (FSDP) checkpoint is a directory: not read here
            for step, ckpt in [(s, c) for s, c in step_checkpoints(run / "checkpoints") if c.is_file()]:
                if step // updates >= int(status.get("global_step", 0)):
                    continue  # the final model is evaluated below
                policy = _load_policy_weights(final_policy, ckpt, stage.config.policy)
                answers = evaluator.answer(policy, spec.samples_per_prompt)
                elapsed = ckpt.stat().st_mtime - started if started else None
                points.append(
                    evaluator.point(
                        answers,
                        spec.samples_per_prompt,
                        method=name,
                        step=step // updates,
                        train_time_s=elapsed,
                        final=False,
                        **info,
                    )
                )
        final_n = max(spec.samples_per_prompt, pass_n)  # as for the baseline: the row reads the first answers
        answers = evaluator.answer(final_policy, final_n)
        final = evaluator.point(
            first_answers(answers, final_n, spec.samples_per_prompt),
            spec.samples_per_prompt,
            method=name,
            step=int(status.get("global_step", 0)),
            train_time_s=status.get("wall_time_s"),
            peak_mem_mb=_peak(status),
            pass_at_k=evaluator.pass_at_k(final_policy, answers, final_n),
            **info,
        )
        points.append(final)
        keep_samples(name, answers, final_n)
        took = time.perf_counter() - t0
        note = pass_at_k_note(final.pass_at_k)
        log(f"{tag} {name}: true reward {final.true_reward:+.3f}, KL {final.kl:.2f}{note} ({took:.1f} s)")
    return points


def pass_at_k_note(scores: dict[str, list[float]]) -> str:
    """'; pass@1 0.41, pass@64 0.90, greedy 0.45': the mean over prompts at the smallest and largest k, and greedy
    pass@1, for a log line ('' without pass@k)."""
    ks = [key for key in scores if key != GREEDY]
    shown = [f"pass@{k} {np.mean(scores[k]):.2f}" for k in dict.fromkeys([ks[0], ks[-1]])] if ks else []
    if GREEDY in scores:
        shown.append(f"greedy {np.mean(scores[GREEDY]):.2f}")
    return "; " + ", ".join(shown) if shown else ""


def aggregate(points: list[Point], spec: CompareSpec, prompt_groups: Sequence[str] | None = None) -> list[Row]:
    """One Row per (method, step) over the seeds that have it: bootstrap statistics of the per-prompt means, and of
    the per-prompt pass@k where every seed has it (over all prompts, and per group: `prompt_groups` holds a label
    per prompt)."""
    groups: dict[tuple[str, int | None], list[Point]] = {}
    for p in points:  # a method's final policies form one row even if its seeds stopped at different steps
        groups.setdefault((p.method, None if p.final else p.step), []).append(p)
    rows = []
    for (method, _), found in groups.items():
        step = max(p.step for p in found)
        found = sorted(found, key=lambda p: -1 if p.seed is None else p.seed)
        stats = {
            key: summarize(
                {method: np.array([p.per_prompt[key] for p in found])},
                reps=spec.bootstrap_reps,
                prompts=spec.bootstrap_prompts,
            )[method]
            for key in ("true", "kl")
        }
        rm = [p.rm_score for p in found if p.rm_score is not None]
        times = [p.train_time_s for p in found if p.train_time_s is not None]
        mems = [p.peak_mem_mb for p in found if p.peak_mem_mb is not None]
        rows.append(
            Row(
                method=method,
                algorithm=found[0].algorithm,
                step=step,
                final=found[0].final,
                seeds=[p.seed for p in found],
                reward=stats["true"],
                kl=stats["kl"],
                rm_score=float(np.mean(rm)) if rm else None,
                length=float(np.mean([p.length for p in found])),
                train_time_s=float(np.mean(times)) if times else None,
                train_time_range=(min(times), max(times)) if times else None,
                peak_mem_mb=float(np.mean(mems)) if mems else None,
                pass_at_k=pass_at_k_summaries(found, spec, prompt_groups),
                pass_at_k_change=pass_at_k_changes(found, points, spec, prompt_groups),
            )
        )
    return rows


def pass_at_k_summaries(
    points: list[Point], spec: CompareSpec, groups: Sequence[str] | None = None, minus: list[Point] | None = None
) -> dict[str, dict[str, Summary]]:
    """group -> key ("greedy", "1", ...) -> the Summary of the points' (one per seed) per-prompt pass@k: over every
    prompt ("all"), then over the prompts of each group in `groups` (a label per prompt); {} unless every point
    has pass@k. `minus`: points of the same seeds, in the same order, whose per-prompt pass@k is subtracted first."""
    if not points or not all(p.pass_at_k for p in points):
        return {}
    scores = {key: np.array([p.pass_at_k[key] for p in points]) for key in points[0].pass_at_k}
    if minus is not None:
        scores = {key: s - np.array([p.pass_at_k[key] for p in minus]) for key, s in scores.items()}
    columns: dict[str, Any] = {ALL: slice(None)}
    if groups is not None:
        labels = np.asarray(groups)
        columns.update({g: np.flatnonzero(labels == g) for g in group_order(groups)})
    return {
        g: summarize(
            {key: s[:, cols] for key, s in scores.items()}, reps=spec.bootstrap_reps, prompts=spec.bootstrap_prompts
        )
        for g, cols in columns.items()
    }


def pass_at_k_changes(
    found: list[Point], points: list[Point], spec: CompareSpec, groups: Sequence[str] | None = None
) -> dict[str, dict[str, Summary]]:
    """The change of a method's final pass@k from the baseline's, per seed and prompt (method - baseline on the same
    prompt in the same seed), summarised like pass@k itself: pairing takes out how hard each prompt is, which
    dominates the spread of either side alone, so the interval is the one that says whether the method moved it.
    {} for the baseline itself, checkpoints, or seeds without a baseline point."""
    if not found or not found[0].final or found[0].method == spec.baseline:
        return {}
    base = {p.seed: p for p in points if p.final and p.method == spec.baseline and p.pass_at_k}
    if any(p.seed not in base for p in found):
        return {}
    return pass_at_k_summaries(found, spec, groups, minus=[base[p.seed] for p in found])


def _row_json(row: Row) -> dict[str, Any]:
    return {**asdict(row), "reward": asdict(row.reward), "kl": asdict(row.kl)}


def final_scores(result: CompareResult, key: str = "true") -> dict[str, np.ndarray]:
    """method -> [seeds x prompts] per-prompt scores of its final policy, seeds in one order for every method."""
    out: dict[str, list[list[float]]] = {}
    for p in sorted(result.finals(), key=lambda p: -1 if p.seed is None else p.seed):
        out.setdefault(p.method, []).append(p.per_prompt[key])
    return {m: np.array(v) for m, v in out.items()}


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def _ci(s: Summary, digits: int = 2, sign: bool = False) -> str:
    f = f"+.{digits}f" if sign else f".{digits}f"
    return f"{s.mean:{f}} [{s.ci[0]:{f}}, {s.ci[1]:{f}}]"


PROMPT_DRAW = {
    "crossed": "one draw for every seed, since every seed answers the same prompts",
    "nested": "redrawn within each seed",
}
COLUMNS = (
    "method",
    "algorithm",
    "step",
    "final",
    "n_seeds",
    "true_reward",
    "true_reward_se",
    "true_reward_ci_low",
    "true_reward_ci_high",
    "true_reward_iqm",
    "delta_vs_baseline",
    "kl",
    "kl_se",
    "kl_ci_low",
    "kl_ci_high",
    "rm_score",
    "length",
    "train_time_s",
    "peak_mem_mb",
)
PASS_COLUMNS = (
    "method",
    "group",
    "k",
    "n_seeds",
    "mean",
    "ci_low",
    "ci_high",
    "change",
    "change_ci_low",
    "change_ci_high",
)


def write_table(result: CompareResult, num_prompts: int, spec: CompareSpec, pipeline: Pipeline | None = None) -> None:
    """summary.md (final rows, ranking, pass@k, probability of improvement), summary.csv (every row, checkpoints
    too) and, with pass@k, pass_at_k.csv (long format: a line per method, group and k)."""
    out = result.out_dir
    base = next(r for r in result.rows if r.method == result.baseline and r.final)
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in result.rows:
            writer.writerow(
                [
                    r.method,
                    r.algorithm,
                    r.step,
                    r.final,
                    r.reward.n_seeds,
                    r.reward.mean,
                    r.reward.se,
                    *r.reward.ci,
                    r.reward.iqm,
                    r.reward.mean - base.reward.mean,
                    r.kl.mean,
                    r.kl.se,
                    *r.kl.ci,
                    r.rm_score,
                    r.length,
                    r.train_time_s,
                    r.peak_mem_mb,
                ]
            )
    seeds = sorted({s for r in result.rows for s in r.seeds if s is not None})
    shared = [s for s in pipeline.stages if s in pipeline.shared] if pipeline is not None else []
    if seeds:
        how = f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
        how += (
            f"; {', '.join(shared)} ran once and every seed started from {'it' if len(shared) == 1 else 'them'}"
            if shared
            else "; every stage ran once per seed, SFT included"
        )
    else:
        how = "one seed (set compare.seeds for intervals over seeds)"
    lines = [
        f"True reward, KL to `{base.method}` and reward-model score on {num_prompts} held-out prompts x "
        f"{spec.samples_per_prompt} samples (temperature {spec.temperature}), {how}.",
        f"Brackets: 95% bootstrap interval ({spec.bootstrap_reps} replicates: seeds resampled, then prompts, "
        f"{PROMPT_DRAW[spec.bootstrap_prompts]}); IQM: interquartile mean of the per-seed means; n: seeds.",
        "",
        f"| method | n | true reward [95% CI] | IQM | vs {base.method} | KL (nats) [95% CI] | RM score | length "
        "| train time | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.final_rows():
        delta = r.reward.mean - base.reward.mean
        lines.append(
            f"| {r.method} | {r.reward.n_seeds} | {_ci(r.reward, 3, sign=True)} | {r.reward.iqm:+.3f} | "
            f"{'–' if r is base else f'{delta:+.3f}'} | {_ci(r.kl)} | {_fmt(r.rm_score)} | {r.length:.1f} | "
            f"{_fmt(r.train_time_s, 0, ' s')} | {_fmt(r.peak_mem_mb, 0, ' MB')} |"
        )
    lines += ["", *ranking_lines(result)]
    if result.pass_at_k_rows():
        lines += ["", *pass_at_k_lines(result, spec)]
        write_pass_at_k_csv(result, out / "pass_at_k.csv")
    if result.failed:
        lines += ["", "Runs that did not finish (left out above):", ""]
        lines += [f"- `{label}`: {why}" for label, why in result.failed.items()]
    methods, matrix, low, high = result.improvement or _improvement(result, spec)
    if len(methods) > 1:
        lines += [
            "",
            "Probability of improvement P(row > column): the chance that, on a random held-out prompt, a random "
            "seed's run of the row's method earns more true reward than one of the column's (Agarwal et al. 2021), "
            "95% bootstrap interval in brackets.",
            "",
            "| P(row > column) | " + " | ".join(methods) + " |",
            "|---|" + "---:|" * len(methods),
        ]
        for i, m in enumerate(methods):
            cells = [
                "–" if i == j else f"{matrix[i, j]:.2f} [{low[i, j]:.2f}, {high[i, j]:.2f}]"
                for j in range(len(methods))
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def _pass_label(key: str) -> str:
    return "greedy pass@1" if key == GREEDY else f"pass@{key}"


def pass_at_k_lines(result: CompareResult, spec: CompareSpec) -> list[str]:
    """The Pass@k section of summary.md: a table over all prompts (greedy pass@1, then every k), what n, threshold
    and temperature were, a smaller table per group (greedy, the smallest and the largest k; every k when there
    are at most three), and which methods' intervals lie above or below the baseline's."""
    rows = result.pass_at_k_rows()
    pass_spec = spec.pass_at_k
    if not rows or pass_spec is None:
        return []
    keys = list(rows[0].pass_at_k[ALL])
    ks = [key for key in keys if key != GREEDY]
    ends = list(dict.fromkeys([ks[0], ks[-1]]))  # pass@1 and pass@max k by default
    few = keys if len(ks) <= 3 else [key for key in keys if key == GREEDY or key in ends]

    def table(group: str, shown: list[str]) -> list[str]:
        out = [
            "| method | n | " + " | ".join(_pass_label(k) for k in shown) + " |",
            "|---|---:|" + "---:|" * len(shown),
        ]
        for r in rows:
            stats = r.pass_at_k[group]
            out.append(f"| {r.method} | {stats[shown[0]].n_seeds} | " + " | ".join(_ci(stats[k]) for k in shown) + " |")
        return out

    greedy = " Greedy pass@1: one argmax answer per prompt, correct or not." if pass_spec.greedy else ""
    n_prompts = rows[0].pass_at_k[ALL][keys[0]].n_prompts
    lines = [
        "## Pass@k",
        "",
        f"Pass@k on {n_prompts} held-out prompts: the chance that at least one of k sampled answers is correct (true "
        f"reward >= {pass_spec.threshold:g}), estimated per prompt from n = {pass_spec.samples} samples at "
        f"temperature {spec.temperature:g}, c of them correct, as 1 - C(n - c, k) / C(n, k) (Chen et al. 2021), "
        f"then averaged over prompts and seeds.{greedy} Brackets: 95% bootstrap interval, as above.",
        "",
        *table(ALL, keys),
    ]
    groups = [g for g in rows[0].pass_at_k if g != ALL]
    for g in groups:
        size = rows[0].pass_at_k[g][keys[0]].n_prompts
        lines += ["", f"{pass_spec.by} = {g} ({size} prompt{'s' if size != 1 else ''}):", "", *table(g, few)]
    changed = [r for r in rows if r.pass_at_k_change]
    if not changed:
        return lines
    lines += [
        "",
        f"Change from {result.baseline}, paired: each seed's per-prompt pass@k minus {result.baseline}'s on the same "
        f"prompt in the same seed, then averaged; 95% bootstrap interval as above. An interval above 0: the method "
        f"raised it on these prompts over these seeds; one that holds 0: no change shown.",
        "",
    ]
    for g in [ALL, *groups]:
        where = "all prompts" if g == ALL else f"{pass_spec.by} = {g}"
        shown = [key for key in keys if key == GREEDY or key in ends]
        lines += [
            f"| change, {where} | " + " | ".join(_pass_label(k) for k in shown) + " |",
            "|---|" + "---:|" * len(shown),
        ]
        for r in changed:
            cells = [f"{_ci(r.pass_at_k_change[g][k], sign=True)}{_side(r.pass_at_k_change[g][k])}" for k in shown]
            lines.append(f"| {r.method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines[:-1]


def _side(s: Summary) -> str:
    """' ↑' when the interval lies above 0, ' ↓' below it, '' when it holds 0."""
    return " ↑" if s.ci[0] > 0 else " ↓" if s.ci[1] < 0 else ""


def write_pass_at_k_csv(result: CompareResult, path: Path) -> None:
    """pass_at_k.csv: method, group, k ("greedy" or the number), n_seeds, mean, ci_low, ci_high, and the paired
    change from the baseline with its interval (empty for the baseline)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PASS_COLUMNS)
        for r in result.pass_at_k_rows():
            for group, stats in r.pass_at_k.items():
                for key, s in stats.items():
                    change = r.pass_at_k_change.get(group, {}).get(key)
                    paired = [change.mean, *change.ci] if change is not None else ["", "", ""]
                    writer.writerow([r.method, group, key, s.n_seeds, s.mean, *s.ci, *paired])


def ranking_lines(result: CompareResult) -> list[str]:
    """The order of the final rows by true reward, claimed only where the 95% intervals separate: a chain of
    tiers (no order claimed inside braces), then a line per method with every pair that does separate."""
    ranking = separable_ranking({r.method: r.reward for r in result.final_rows()})
    chain = " > ".join(t[0] if len(t) == 1 else "{" + ", ".join(t) + "}" for t in ranking.tiers)
    inside = any(b in tier for tier in ranking.tiers for a in tier for b in ranking.above[a])
    note = " (some pairs inside braces do separate: see the lines below)" if inside else ""
    seeds = min(r.reward.n_seeds for r in result.final_rows())
    # a percentile bootstrap over n seeds is about mean ± 1.96 s_n / sqrt(n) (n-divisor s.d.): for normal seed
    # effects it covers like a t interval at 1.96 sqrt((n-1)/n), i.e. ~75% at n = 3, 85% at 5, 90% at 10
    caution = (
        [
            "",
            f"With {seeds} seed{'s' if seeds > 1 else ''}, a 95% bootstrap interval covers the true mean less often "
            "than 95% (about 75% at 3 seeds, 85% at 5, 90% at 10, for normal seed effects): treat this order as "
            "provisional, or run more seeds (compare.seeds).",
        ]
        if seeds < 10
        else []
    )
    return [
        "Ranking by true reward: an order is claimed only where the 95% intervals do not overlap.",
        "",
        f"    {chain}{note}",
        "",
        *(f"- {line}" for line in ranking.lines()),
        *caution,
    ]


def _improvement(result: CompareResult, spec: CompareSpec) -> tuple[list[str], Any, Any, Any]:
    scores = final_scores(result)
    return improvement_matrix(scores, reps=spec.bootstrap_reps, prompts=spec.bootstrap_prompts)


def _pass_tag(group: str, key: str) -> str:
    """`eval/pass@k/<key>` over all prompts, `eval/pass@k/<group>/<key>` for a group (a slash or space in the
    label becomes _, so that the label stays one level of TensorBoard's tag tree)."""
    if group == ALL:
        return f"{PASS_TAG}/{key}"
    return f"{PASS_TAG}/{_TAG_BREAKS.sub('_', group)}/{key}"


def pass_at_k_scalars(p: Point | Row, groups: Sequence[str] | None = None) -> dict[str, float]:
    """The `eval/pass@k/*` TensorBoard values of one seed's point (means over its prompts) or of a row (means over
    seeds and prompts): greedy and each k, over all prompts and over each group's (`groups`: a label per prompt,
    which a row already holds its summaries by)."""
    if isinstance(p, Row):
        return {_pass_tag(g, key): s.mean for g, stats in p.pass_at_k.items() for key, s in stats.items()}
    labels = np.asarray(groups) if groups is not None else None
    out = {}
    for key, scores in p.pass_at_k.items():
        x = np.asarray(scores, dtype=np.float64)
        out[_pass_tag(ALL, key)] = float(x.mean())
        for g in group_order(groups) if groups is not None else []:
            out[_pass_tag(g, key)] = float(x[labels == g].mean())
    return out


def pass_at_k_curve(p: Point | Row) -> dict[int, float]:
    """k -> pass@k over all prompts (the mean over prompts, or over seeds and prompts): `eval/pass@k/curve`."""
    if isinstance(p, Row):
        stats = p.pass_at_k.get(ALL, {})
        return {int(key): s.mean for key, s in stats.items() if key != GREEDY}
    return {int(key): float(np.mean(v)) for key, v in p.pass_at_k.items() if key != GREEDY}


def write_tensorboard(result: CompareResult, pipeline: Pipeline, done: PipelineResult) -> None:
    """tensorboard/<method>/seed_<k>: the run's training events and its `compare/*` points; <method>/mean: the
    seed mean of every `compare/*` tag. Best-of-n and the baseline's own points go under the baseline. With
    pass@k, `eval/pass@k/*` at the baseline's step 0 and the final step, and `eval/pass@k/curve` of the method's
    final policy with k as its step."""
    from torch.utils.tensorboard import SummaryWriter

    root = result.out_dir / "tensorboard"
    spec: CompareSpec = pipeline.compare
    base = {p.seed: p for p in result.finals() if p.method == spec.baseline}

    def write(
        dest: Path, points: list[tuple[int, float | None, dict[str, float | None]]], final: Point | Row | None
    ) -> None:
        with SummaryWriter(str(dest)) as writer:
            for step, when, values in points:
                for tag, value in values.items():
                    if value is not None:
                        writer.add_scalar(tag, value, step, walltime=when)
            for k, value in (pass_at_k_curve(final) if final is not None else {}).items():
                writer.add_scalar(f"{PASS_TAG}/curve", value, k)

    def values(p: Point | Row) -> dict[str, float | None]:
        if isinstance(p, Row):
            numbers = (p.reward.mean, p.kl.mean, p.rm_score, p.length)
        else:
            numbers = (p.true_reward, p.kl, p.rm_score, p.length)
        return {**dict(zip(TAGS, numbers, strict=True)), **pass_at_k_scalars(p, result.prompt_groups)}

    for method in dict.fromkeys(p.method for p in result.points if p.algorithm != BEST_OF):
        stage = method
        for seed in dict.fromkeys(p.seed for p in result.points if p.method == method):
            node = pipeline.node(stage, seed)
            dest = root / method / ("run" if seed is None else f"seed_{seed}")
            run = done.runs[node.label]
            _copy_events(run, dest)
            started = read_run_record(run).get("started")
            mine = sorted((p for p in result.points if p.method == method and p.seed == seed), key=lambda p: p.step)
            if method != spec.baseline and seed in base:  # each curve starts at the baseline
                mine = [Point(**{**asdict(base[seed]), "step": 0, "train_time_s": 0.0}), *mine]
            write(
                dest,
                [
                    (p.step, started + p.train_time_s if started and p.train_time_s is not None else None, values(p))
                    for p in mine
                ],
                next((p for p in mine if p.method == method and p.final), None),
            )
        rows = sorted((r for r in result.rows if r.method == method), key=lambda r: r.step)
        if method != spec.baseline:  # the mean curve starts at the baseline's mean too
            rows = [r for r in result.final_rows() if r.method == spec.baseline] + rows
        final = next((r for r in rows if r.method == method and r.final), None)
        write(
            root / method / "mean", [(0 if r.method == spec.baseline else r.step, None, values(r)) for r in rows], final
        )


def plot(result: CompareResult, out: Path, spec: CompareSpec) -> None:
    """frontier.png, curves.png, improvement.png, reward_vs_time.png, and with pass@k pass_at_k.png,
    pass_at_k_change.png and pass1_vs_kl.png (alignkit/compare_plots.py)."""
    from alignkit.compare_plots import plot_all

    plot_all(result, out, reps=spec.bootstrap_reps, prompts=spec.bootstrap_prompts, pass_at_k=spec.pass_at_k)
