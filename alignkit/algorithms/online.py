"""The online RL loop shared by PPO, GRPO, ReMax, REINFORCE and rejection sampling: sample, score, update.

One Lightning training step is one iteration: the step's prompts are sampled (`samples_per_prompt` each),
scored by the reward and the frozen reference, turned into advantages by the algorithm, and the policy is
updated `update_epochs` times over `num_minibatches` minibatches (optimizer steps), each accumulated over
micro-batches of `micro_batch_size` sequences. TensorBoard's x axis counts iterations for every algorithm,
so curves overlay whatever the number of optimizer steps per iteration.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor

from alignkit.algorithms.base import AlignModule
from alignkit.data.loader import ResumableLoader, ShardedSampler
from alignkit.ops import masked_mean, masked_sum
from alignkit.ops.layout import consecutive_groups
from alignkit.ops.rl import aggregate, clipped_policy_loss, informative_groups, kl_penalty, overlong_penalty
from alignkit.rewards import RewardInputs
from alignkit.rollout.engine import build_engine, reuses_logprobs
from alignkit.rollout.rollout import Rollout, SamplingParams, concat_rollouts, score

log = logging.getLogger(__name__)


def keep_groups_together(order: Tensor, rollout: Rollout) -> Tensor:
    """The shuffled rows `order` with each prompt's samples next to each other (groups in the order their first
    row drew), so a micro-batch holds whole groups and their prompt is scored once (trainer.shared_prompts). The
    same random draw as without, so sampling downstream is unchanged."""
    groups = consecutive_groups(rollout.sequences[:, : rollout.prompt_length])[order]
    first = torch.full((int(groups.max()) + 1,), len(order), device=order.device)
    first = first.scatter_reduce(0, groups, torch.arange(len(order), device=order.device), "amin")
    return order[torch.argsort(first[groups] * len(order) + torch.arange(len(order), device=order.device))]


def exact_scoring(cfg: Any) -> bool:
    """Whether the engine's log-probs equal scoring's to float32 rounding in this run: float32 weights at 32-true
    precision (bf16, or autocast to it, rounds a one-token decode step and a full forward differently) and no
    dropout (sampling is in eval mode, scoring in train mode)."""
    lora = getattr(cfg.policy, "lora", None)
    no_dropout = cfg.trainer.disable_dropout and (lora is None or lora.dropout == 0)
    return cfg.hardware.precision == "32-true" and cfg.policy.dtype == "float32" and no_dropout


class OnlineModule(AlignModule):
    """Base of the online algorithms: rollouts, rewards and the update loop; subclasses supply the math.

    A subclass implements `advantages(exp)` (fills what its loss needs into the experience dict) and
    `loss(exp, rows, counts)` -> (loss, metrics) for one micro-batch; both see tensors only.
    """

    needs_old_logps: ClassVar[bool] = False  # PPO needs them for its KL reward even with one update

    def __init__(self, cfg: Any, models: dict[str, Any], tokenizer: Any) -> None:
        super().__init__(cfg, models, tokenizer)
        self.automatic_optimization = False  # several optimizer steps per iteration (PPO epochs x minibatches)
        self.last_counts = (0, 0)  # (samples, tokens) of the last iteration on this rank, for PerfMonitor
        self.engine = build_engine(cfg.rollout)
        self.weights_changed = False  # since the engine last sampled (engine.load_weights before the next)
        self.reuse_logprobs = self.engine.returns_logprobs and reuses_logprobs(
            cfg.rollout.reuse_logprobs, exact=exact_scoring(cfg)
        )
        # dynamic sampling's extra prompts: a loader made on first use, and its place from a checkpoint
        self.reserve: ResumableLoader | None = None
        self.reserve_state: dict[str, int] | None = None

    # -- sampling and scoring ------------------------------------------------------------------------
    def sample(self, batch: dict[str, Any], *, greedy: bool = False, num_samples: int | None = None) -> Rollout:
        """The policy's responses to the batch's prompts, from the run's rollout engine (rollout.engine)."""
        a = self.algo
        if self.weights_changed:
            self.engine.load_weights(self.policy)
            self.weights_changed = False
        params = SamplingParams(
            max_new_tokens=a.max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            temperature=a.temperature,
            top_p=a.top_p,
            greedy=greedy,
            num_samples=a.samples_per_prompt if num_samples is None else num_samples,
            synced=self.trainer.world_size > 1,
        )
        return self.engine.generate(self.policy, batch["prompt_input_ids"], batch["prompt_attention_mask"], params)

    def policy_logps(self, rollout: Rollout) -> Tensor:
        """The policy's per-token log-probs of its own rollout before any update: the engine's, where they agree
        with scoring (rollout.reuse_logprobs), else a forward over the samples."""
        if self.reuse_logprobs and rollout.logprobs is not None:
            return rollout.logprobs
        return self.logps_of(self.policy, rollout)

    def rewards(self, rollout: Rollout, batch: dict[str, Any], num_samples: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Rewards [N] of a rollout (post-processed as the reward section says) and the reward's metrics."""
        return self.reward(RewardInputs.from_rollout(self.tokenizer, rollout, batch.get("metadata"), num_samples))

    def micro_batches(self, rows: Tensor, rollout: Rollout) -> list[Tensor]:
        """`rows` of the rollout in micro-batches: of micro_batch_size rows, or filled to the token budget (a
        prompt's samples kept in order when they share it), as many on every process."""
        if not self.token_budget:
            return list(rows.split(self.cfg.trainer.micro_batch_size))
        lengths = rollout.attention_mask[rows].sum(-1)
        chunks = self.budget_chunks(lengths, keep_order=self.cfg.trainer.shared_prompts)
        return [rows[c.to(rows.device)] for c in chunks]

    @torch.no_grad()
    def logps_of(self, model: Any, rollout: Rollout) -> Tensor:
        """Per-token log-probs [N, T] of the rollout under `model`, micro-batch by micro-batch, no graph."""
        return self.by_micro_batch(rollout, lambda sub: score(model, sub, temperature=self.algo.temperature)[0])

    def by_micro_batch(self, rollout: Rollout, fn: Any) -> Tensor:
        """`fn(sub-rollout)` -> [n, T] over the rollout's rows, micro-batch by micro-batch, in row order."""
        rows = torch.arange(len(rollout.sequences), device=rollout.sequences.device)
        chunks = self.micro_batches(rows, rollout)
        out = torch.cat([fn(rollout.index(r)) for r in chunks])
        return out[torch.argsort(torch.cat(chunks))]  # a token budget takes rows longest first

    def experience(self, batch: dict[str, Any], num_samples: int | None = None) -> dict[str, Any] | None:
        """Everything the update needs, computed without gradients: samples, rewards, reference log-probs (None:
        nothing to train on, see `sample_and_score`)."""
        num_samples = num_samples or self.algo.samples_per_prompt
        scored = self.sample_and_score(batch, num_samples)
        if scored is None:
            return None
        rollout, scores, reward_metrics = scored
        exp: dict[str, Any] = {
            "rollout": rollout,
            "scores": scores,
            "ref_logps": self.logps_of(self.reference, rollout),
            "metrics": reward_metrics,
            "batch": batch,
        }
        if self.needs_old_logps or self.algo.updates_per_step() > 1:
            exp["old_logps"] = self.policy_logps(rollout)
        return exp

    def sample_and_score(
        self, batch: dict[str, Any], num_samples: int
    ) -> tuple[Rollout, Tensor, dict[str, Tensor]] | None:
        """The batch's responses, their rewards [N] (float32, on the device) and the reward's metrics; with the
        group methods' dynamic_sampling (informative groups only) and overlong_shaping where the config sets them;
        None when dynamic sampling found nothing to learn from (the run then stops)."""
        rollout = self.sample(batch, num_samples=num_samples)
        scores, metrics = self.rewards(rollout, batch, num_samples)
        scores = scores.to(self.device).float()
        sampling = getattr(self.algo, "dynamic_sampling", None)
        if sampling is not None and num_samples == self.algo.samples_per_prompt:
            informative = self.informative_only(batch, rollout, scores, sampling.max_rounds)
            if informative is None:
                return None
            rollout, scores, more = informative
            metrics = {**metrics, **more}
        shaping = getattr(self.algo, "overlong_shaping", None)
        if shaping is not None:
            n = self.algo.max_new_tokens
            penalty = overlong_penalty(rollout.response_lengths, n, shaping.buffer(n), shaping.penalty).to(scores)
            scores = scores + penalty
            metrics["reward/overlong_penalty"] = penalty.mean()
        return rollout, scores, metrics

    def informative_only(
        self, batch: dict[str, Any], rollout: Rollout, scores: Tensor, max_rounds: int
    ) -> tuple[Rollout, Tensor, dict[str, Tensor]] | None:
        """DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2): the groups whose rewards differ, from the batch's
        prompts and, round after round (at most max_rounds in all), from more prompts of the training set, until
        every process holds as many as the batch has prompts. Every process keeps the same number (the fewest any
        has, at most the batch's), so all take the same optimizer steps; the groups keep the order they came in.
        None, and the run told to stop, when no process found any."""
        g, target = self.algo.samples_per_prompt, len(batch["prompt_input_ids"])
        kept: list[tuple[Rollout, Tensor]] = []
        have = dropped = rounds = 0
        while True:
            informative = informative_groups(scores, g)
            rows = torch.nonzero(informative.repeat_interleave(g)).flatten()
            kept.append((rollout.index(rows), scores[rows]))
            have, dropped, rounds = have + int(informative.sum()), dropped + int((~informative).sum()), rounds + 1
            fewest = self.fewest_over_ranks(have)
            if fewest >= target or rounds >= max_rounds:
                break
            more = self.more_prompts(target)
            rollout = self.sample(more, num_samples=g)
            scores = self.rewards(rollout, more, g)[0].to(self.device).float()
        n = min(fewest, target)
        if n == 0:
            # Nothing to learn from: the policy answers every prompt alike (solves all, or none), or the reward is
            # constant. Training on would only spin (no optimizer step, so no progress towards max_steps).
            log.warning(
                f"dynamic sampling found no prompt whose {g} responses got different rewards on some process, in "
                f"{rounds} rounds of {target} prompts: stopping the run at step {self.trainer.global_step}, as every "
                "group would train on advantages of 0. The policy answers every prompt alike (the task is solved, or "
                "too hard for it) or the reward is constant; to go on, check the reward, raise "
                "algorithm.dynamic_sampling.max_rounds or samples_per_prompt, or set dynamic_sampling: null"
            )
            self.trainer.should_stop = True
            return None
        rollout = concat_rollouts([r for r, _ in kept], self.tokenizer.pad_token_id)
        rows = torch.arange(n * g, device=scores.device)
        metrics = {
            "sampling/rounds": torch.tensor(float(rounds)),
            "sampling/dropped_groups": torch.tensor(float(dropped)),
            "sampling/kept_groups": torch.tensor(float(n)),
        }
        return rollout.index(rows), torch.cat([s for _, s in kept])[rows], metrics

    def fewest_over_ranks(self, count: int) -> int:
        """The smallest `count` over all processes (this one's without torch.distributed)."""
        value = torch.tensor(count, device=self.device)
        if self.trainer.world_size > 1:
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return int(value)

    def more_prompts(self, n: int) -> dict[str, Any]:
        """n more training prompts for dynamic sampling, from a shuffle of the training set of its own (seed + 1,
        this process's share), so the step's batches stay the data loader's; its place is saved in checkpoints."""
        if self.reserve is None:
            data = self.trainer.datamodule
            sampler = ShardedSampler(
                len(data.train_set),
                rank=self.trainer.global_rank,
                world=self.trainer.world_size,
                seed=self.cfg.trainer.seed + 1,
                shuffle=True,
            )
            self.reserve = ResumableLoader(data.train_set, sampler, n, collate_fn=data.collator)
            if self.reserve_state is not None:
                self.reserve.load_state_dict(self.reserve_state)
            self.reserve_batches = iter(self.reserve)
        batch = next(self.reserve_batches, None)
        if batch is None:  # the reserve's epoch is over: the next one is another shuffle
            self.reserve.sampler.set_epoch(self.reserve.sampler.epoch + 1)  # type: ignore[attr-defined]
            self.reserve_batches = iter(self.reserve)
            batch = next(self.reserve_batches)
        return move_data_to_device(batch, self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reserve is not None:
            checkpoint["prompt_reserve"] = self.reserve.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.reserve_state = checkpoint.get("prompt_reserve")

    # -- the iteration -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        exp = self.experience(batch)
        if exp is None:
            return
        self.advantages(exp)
        metrics = self.rollout_metrics(exp)
        metrics.update(self.update(exp))
        metrics.update(self.after_update(exp, metrics))
        self.end_iteration(exp, metrics)

    def end_iteration(self, exp: dict[str, Any], metrics: dict[str, Tensor]) -> None:
        """Count what was generated (for PerfMonitor) and log the iteration's train metrics."""
        rollout = exp["rollout"]
        self.last_counts = (len(rollout.sequences), int(rollout.attention_mask.sum()))
        self.log_split("train", metrics, batch_size=len(rollout.sequences))

    def rollout_metrics(self, exp: dict[str, Any]) -> dict[str, Tensor]:
        rollout, metrics = exp["rollout"], dict(exp["metrics"])
        mask = rollout.response_mask
        metrics["response/length"] = rollout.response_lengths.float().mean()
        metrics["response/finished"] = rollout.finished.float().mean()
        if "old_logps" in exp:  # else the KL is measured in the first update's forward (same weights)
            metrics["kl/ref"] = masked_sum(exp["old_logps"] - exp["ref_logps"], mask, dim=-1).mean()
        return metrics

    def update(self, exp: dict[str, Any], loss_fn: Any = None) -> dict[str, Tensor]:
        """update_epochs passes x num_minibatches optimizer steps over the iteration's samples, with
        `loss_fn(exp, rows, counts)` (default: the algorithm's loss); returns the means of its metrics over the
        micro-batches, and `loss`, the mean over optimizer steps of the loss each minimised."""
        loss_fn = loss_fn or self.loss
        opt, sched = self.optimizers(), self.lr_schedulers()
        world = self.trainer.world_size
        mask = exp["rollout"].response_mask
        # the rows trained on: all samples, or a selection (rejection sampling's best responses)
        train_rows = exp.get("train_rows", torch.arange(len(mask), device=mask.device))
        sums: dict[str, Tensor] = {}
        counts_by_key: dict[str, int] = {}
        for epoch in range(self.algo.update_epochs):
            order = train_rows[torch.randperm(len(train_rows), device=mask.device)]
            if self.cfg.trainer.shared_prompts:
                order = keep_groups_together(order, exp["rollout"])
            for minibatch in order.tensor_split(self.algo.num_minibatches):
                # The loss of each micro-batch is its share of the whole minibatch's (over every rank), so the
                # gradients add up to the minibatch's whatever the micro-batch size and number of processes.
                counts = torch.stack(
                    [mask[minibatch].sum().float(), torch.tensor(float(len(minibatch)), device=mask.device)]
                )
                if world > 1:
                    counts = self.all_gather(counts).sum(0)
                opt.zero_grad()
                minibatch_loss = torch.zeros((), device=mask.device)
                for rows in self.micro_batches(minibatch, exp["rollout"]):
                    loss, metrics = loss_fn(exp, rows, {"tokens": counts[0], "sequences": counts[1], "epoch": epoch})
                    # DDP and FSDP average gradients over ranks; the shares already sum to the whole
                    self.manual_backward(loss * world)
                    minibatch_loss += loss.detach().float() * world
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v.detach().float()
                        counts_by_key[k] = counts_by_key.get(k, 0) + 1
                # train/loss: the objective this step minimised, the micro-batches' shares summed (this rank's
                # shares x the number of ranks: the whole minibatch's loss when ranks hold alike samples)
                sums["loss"] = sums.get("loss", 0.0) + minibatch_loss
                counts_by_key["loss"] = counts_by_key.get("loss", 0) + 1
                if self.cfg.trainer.gradient_clip_val:
                    self.clip_gradients(opt, gradient_clip_val=self.cfg.trainer.gradient_clip_val)
                opt.step()
                sched.step()
                self.weights_changed = True
        return {k: v / counts_by_key[k] for k, v in sums.items()}

    # -- what subclasses define ----------------------------------------------------------------------
    def advantages(self, exp: dict[str, Any]) -> None:
        """Fill exp["advantages"]: [N] per response (critic-free methods) or [N, T] per token (PPO)."""
        raise NotImplementedError

    def loss(self, exp: dict[str, Any], rows: Tensor, counts: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """The critic-free policy-gradient loss (GRPO, ReMax, REINFORCE), for micro-batch `rows`.

        Per token: -min(ratio A, clip(ratio) A) + kl_coef * KL(pi || ref), A the response's advantage; with one
        update per iteration the ratio is 1 and this is REINFORCE's -A log pi (the clip only acts on later
        passes). Aggregated by `loss_aggregation` over the whole optimizer step.
        """
        a, sub = self.algo, exp["rollout"].index(rows)
        mask = sub.response_mask
        logps, entropy = score(self.policy, sub, temperature=a.temperature, with_entropy=True)
        old = exp["old_logps"][rows] if "old_logps" in exp else logps.detach()
        pg, pg_metrics = clipped_policy_loss(
            logps, old, exp["advantages"][rows], mask, a.clip_eps, a.clip_eps_high, a.importance_ratio
        )
        ref = exp["ref_logps"][rows]
        kl_coef = self.loss_kl_coef()
        per_token = pg + kl_coef * kl_penalty(logps, ref, a.kl_estimator) if kl_coef else pg
        norm = {"num_tokens": counts["tokens"], "num_sequences": counts["sequences"], "max_len": a.max_new_tokens}
        loss = aggregate(per_token, mask, a.loss_aggregation, **norm)
        metrics = {
            "policy/clipfrac": pg_metrics["clipfrac"],
            "policy/approx_kl": pg_metrics["approx_kl"],
            "entropy": masked_mean(entropy.detach(), mask),
        }
        if counts["epoch"] == 0 and "old_logps" not in exp:
            # weights unchanged since sampling: the KL to the reference of what was sampled
            metrics["kl/ref"] = masked_sum(logps.detach() - ref, mask, dim=-1).mean()
        return loss, metrics

    def after_update(self, exp: dict[str, Any], metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def loss_kl_coef(self) -> float:
        """Weight of the per-token KL to the reference in `loss` (0 where an algorithm puts the KL in the reward)."""
        return self.algo.kl_coef

    # -- evaluation ----------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with torch.no_grad():
            rollout = self.sample(batch, greedy=self.algo.eval_greedy, num_samples=1)
            _, reward_metrics = self.rewards(rollout, batch, 1)
            logps = self.policy_logps(rollout)
            ref = self.logps_of(self.reference, rollout)
        metrics = {
            **reward_metrics,
            "kl/ref": masked_sum(logps - ref, rollout.response_mask, dim=-1).mean(),
            "response/length": rollout.response_lengths.float().mean(),
        }
        self.log_split("eval", metrics, batch_size=len(rollout.sequences))
