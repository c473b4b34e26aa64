"""RewardFunction: a reward source plus its post-processing (EOS penalty, normalisation, clipping), and its builder."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from alignkit.rewards.normalize import RunningMoments, batch_moments, whiten
from alignkit.rewards.sources import Metrics, RewardInputs, build_source
from alignkit.rewards.spec import RewardSpec


def _no_normalize(fn: RewardFunction, rewards: Tensor) -> tuple[Tensor, Metrics]:
    return rewards, {}


def _batch_normalize(fn: RewardFunction, rewards: Tensor) -> tuple[Tensor, Metrics]:
    return whiten(rewards, batch_moments(rewards)), {}


def _running_normalize(fn: RewardFunction, rewards: Tensor) -> tuple[Tensor, Metrics]:
    # Updated before use, so the first batch is whitened by its own moments rather than passed through raw;
    # evaluation (eval mode) uses the statistics without adding held-out rewards to them.
    if fn.training:
        fn.running.update(batch_moments(rewards))
    stats = {"running_mean": fn.running.mean, "running_std": fn.running.std}
    return whiten(rewards, fn.running.moments), {k: torch.tensor(v, device=rewards.device) for k, v in stats.items()}


NORMALIZERS: dict[str, Callable[[RewardFunction, Tensor], tuple[Tensor, Metrics]]] = {
    "none": _no_normalize,
    "batch": _batch_normalize,
    "running": _running_normalize,
}


class RewardFunction(nn.Module):
    """Rewards [B] for a batch of responses: the source's scores, then EOS penalty, normalisation, clipping.

    An nn.Module so that reward models inside move with the LightningModule that holds it and land in its
    checkpoints, together with the running normaliser's state. Reward models stay frozen: no gradients, and
    eval mode (no dropout) whatever mode the holder sets; the holder's mode only decides whether the running
    statistics take in new rewards (training) or are just applied (evaluation).

    forward returns (rewards [B] float32 on the inputs' device, metrics) with metrics under `reward/`:
    raw_mean and raw_std (the source's scores), mean and std (after post-processing), the source's own
    (`<i>_<kind>` per weighted_sum term, `safety_share` for llama2, ...), and eos_penalized, running_mean,
    running_std, clipped when those steps are on.
    """

    def __init__(
        self,
        source: nn.Module,
        normalize: str = "none",
        clip: float | None = None,
        eos_penalty: float | None = None,
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZERS:
            raise ValueError(f"normalize: unknown (got '{normalize}'); allowed: {', '.join(NORMALIZERS)}")
        self.source = source.requires_grad_(False)
        self.normalize, self.clip, self.eos_penalty = normalize, clip, eos_penalty
        self.running = RunningMoments() if normalize == "running" else None
        self.train()

    def train(self, mode: bool = True) -> RewardFunction:
        self.training = mode
        self.source.eval()
        return self

    @torch.no_grad()
    def forward(self, inputs: RewardInputs) -> tuple[Tensor, Metrics]:
        raw, source_metrics = self.source(inputs)
        raw = raw.float()
        # mean/std are the source's scores, before post-processing: the number that overlays across runs
        # (after batch normalisation the processed mean is about 0 by construction)
        metrics: Metrics = {"mean": raw.mean(), "std": raw.std(unbiased=False), **source_metrics}
        rewards = raw
        if self.eos_penalty is not None:
            unfinished = ~inputs.finished.to(device=raw.device, dtype=torch.bool)
            rewards = rewards + self.eos_penalty * unfinished.float()
            metrics["eos_penalized"] = unfinished.float().mean()
        rewards, norm_metrics = NORMALIZERS[self.normalize](self, rewards)
        metrics.update(norm_metrics)
        if self.clip is not None:
            metrics["clipped"] = (rewards.abs() > self.clip).float().mean()
            rewards = rewards.clamp(-self.clip, self.clip)
        metrics.update({"processed_mean": rewards.mean(), "processed_std": rewards.std(unbiased=False)})
        return rewards, {f"reward/{k}": v.detach().float() for k, v in metrics.items()}


def build_reward(spec: RewardSpec, tokenizer: PreTrainedTokenizerBase) -> RewardFunction:
    """The reward function of a `reward:` section; `tokenizer` is the policy's (the ids RewardInputs carry)."""
    source = build_source(spec.source, tokenizer, "reward.source")
    return RewardFunction(source, spec.normalize, spec.clip, spec.eos_penalty)
