"""Tensor math shared by the online RL algorithms (PPO, GRPO, ReMax, REINFORCE): KL, advantages, clipped losses.

Per-token tensors are [B, T] over the full sequence layout (prompt + response) with `mask` [B, T] set on
response tokens; per-token outputs are 0 wherever the mask is 0. Every function is pure: tensors and scalars
in, tensors out, no models and no collectives (callers pass global counts where a reduction spans ranks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from alignkit.ops.logprobs import masked_mean, masked_sum
from alignkit.registry import did_you_mean


def _unknown(what: str, name: str, allowed: list[str] | tuple[str, ...]) -> ValueError:
    return ValueError(f"unknown {what} (got {name!r}); allowed: {', '.join(allowed)}{did_you_mean(name, allowed)}")


# --- KL estimators -----------------------------------------------------------------------------------------
# Schulman 2020, "Approximating KL divergence" (http://joschu.net/blog/kl-approx.html). With r = log(pi/ref) on
# tokens sampled from pi: k1 is unbiased but often negative; k2 is biased, low variance; k3 is unbiased and >= 0.
def _k1(r: Tensor) -> Tensor:
    return r


def _k2(r: Tensor) -> Tensor:
    return r**2 / 2


def _k3(r: Tensor) -> Tensor:
    # ref/pi - log(ref/pi) - 1 with ref/pi = exp(-r); expm1 keeps precision where r is near 0
    return torch.expm1(-r) + r


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || ref) from log-probs of tokens sampled from pi; same shape as the inputs."""
    if kind not in KL_ESTIMATORS:
        raise _unknown("KL estimator kind", kind, list(KL_ESTIMATORS))
    return KL_ESTIMATORS[kind](logprobs - ref_logprobs)


# --- normalisation -----------------------------------------------------------------------------------------
def whiten(values: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (all if mask is None); 0 where the mask is 0.

    var has Bessel's correction n / (n - 1), as TRL's `masked_var`/`masked_whiten` (from Ziegler et al. 2019's
    lm-human-preferences). shift_mean=False adds the mean back: the values are only rescaled. With fewer than
    2 entries the variance is undefined, so x - mean is returned unscaled (no NaN, no host sync to check).
    """
    mask = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    n = mask.sum()
    mean = masked_mean(values, mask)
    centered = (values - mean) * mask
    var = masked_sum(centered**2, mask) / (n - 1).clamp(min=1.0)
    scale = torch.where(n >= 2, torch.rsqrt(var + eps), torch.ones_like(var))
    whitened = centered * scale
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# --- advantages and returns --------------------------------------------------------------------------------
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns, both [B, T] and 0 where mask is 0.

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation", eq. 16:
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}; returns = A + V (the value target).
    The response is contiguous and may start at a different position in each row; the episode ends at the
    last response token, so V and A beyond it count as 0 whatever the tensors hold there. Values are detached:
    advantages and returns are targets, and a gradient through them would train the critic on its own output.
    """
    m = mask.to(values.dtype)
    values, rewards = values.detach() * m, rewards.detach() * m
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # masked positions reset the recursion, so a padded tail after the response never leaks into it
        next_advantage = (delta + gamma * lam * next_advantage) * m[:, t]
        next_value = values[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * m


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards [B, T]: -kl_coef * kl on every response token, plus scores[b] on row b's last one.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. 2 (R = r - beta log(pi/rho)),
    spread over tokens as InstructGPT (Ouyang et al. 2022) and TRL's PPOTrainer do: the KL term on each token,
    the sequence score at the end. A row with an empty mask gets no score.
    """
    m = mask.to(kl.dtype)
    rewards = -kl_coef * kl * m
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * (m > 0)).argmax(dim=1, keepdim=True)
    has_response = (m.sum(dim=1, keepdim=True) > 0).to(rewards.dtype)
    return rewards.scatter_add(1, last, scores.to(rewards.dtype).unsqueeze(1) * has_response)


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """rewards [N * G], one prompt's samples contiguous, as [N, G]; a clear error for sizes that do not fit."""
    if group_size < 2:
        raise ValueError(
            f"group_size must be at least 2 (got {group_size}): a group of one has no baseline from its own "
            "group; sample several responses per prompt"
        )
    if rewards.numel() % group_size:
        raise ValueError(
            f"rewards has {rewards.numel()} entries, not a multiple of group_size {group_size}; expected the "
            "samples of each prompt contiguous, group after group"
        )
    return rewards.view(-1, group_size)


def group_advantages(rewards: Tensor, group_size: int, scale: str = "std", eps: float = 1e-4) -> Tensor:
    """Group-relative advantages [N * G] from rewards laid out group after group (one prompt's samples together).

    A = r - group mean (Shao et al. 2024, DeepSeekMath, sec. 4.1.2), divided by the group's unbiased std + eps
    when scale is "std" (as TRL's GRPOTrainer); left unscaled when scale is "none" (Dr. GRPO, Liu et al. 2025,
    "Understanding R1-Zero-Like Training": dividing by std over-weights prompts that are nearly always solved
    or nearly always failed).
    """
    if scale not in ("std", "none"):
        raise _unknown("group advantage scale", scale, ["std", "none"])
    grouped = _groups(rewards, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "std":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    return advantages.view_as(rewards)


def leave_one_out_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """A_i = r_i - mean of the other k - 1 rewards of its group, [N * k], groups contiguous.

    RLOO's baseline (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al.
    2024, "Back to Basics", eq. 6): it excludes the sample itself, so it is independent of that sample and the
    estimate stays unbiased. Equal to k / (k - 1) x (r_i - group mean).
    """
    grouped = _groups(rewards, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).view_as(rewards)


def reward_to_go(rewards: Tensor, mask: Tensor) -> Tensor:
    """sum_{i >= t} r_i over each row's response tokens, [B, T] (the undiscounted return, gamma = 1), 0 off them.

    REINFORCE++'s per-token advantage before normalisation (Hu 2025, eq. 8): with `token_rewards`, the score minus
    kl_coef x the KL still to come in the response. gae() with values 0 and gamma = lam = 1 gives the same.
    """
    m = mask.to(rewards.dtype)
    return (rewards * m).flip(-1).cumsum(-1).flip(-1) * m


def reinforce_pp_advantages(
    scores: Tensor,
    kl: Tensor | None,
    mask: Tensor,
    kl_coef: float,
    moments: Callable[[Tensor], tuple[float, float, float]],
    group_size: int | None = None,
) -> Tensor:
    """Per-token advantages [N, T] of REINFORCE++ (Hu 2025, eqs. 8-10), 0 off the response tokens.

    A_t = r - kl_coef x sum_{i >= t} KL_i (the reward-to-go of `token_rewards`: the score on the last token, -kl_coef
    x KL on each), with r the score, or with `group_size` the score minus its group's mean (REINFORCE++ with
    baseline). Then (A - mean) / sqrt(var + 1e-8) over every response token of the step, from `moments` of the
    masked A: (count, mean, M2). The caller passes moments over all processes (rewards.normalize.batch_moments),
    so the result does not depend on how the rows are spread over them. `kl` [N, T] is the per-token KL (None
    with kl_coef 0).
    """
    if group_size is not None:
        scores = group_advantages(scores, group_size, scale="none")
    kl = torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device) if kl is None else kl
    returns = reward_to_go(token_rewards(scores, kl, mask, kl_coef), mask)
    count, mean, m2 = moments(returns[mask.bool()])
    # Bessel's correction as whiten(); below two tokens only centred (no spread to divide by)
    scale = 1 / math.sqrt(m2 / (count - 1) + 1e-8) if count >= 2 else 1.0
    return (returns - mean) * scale * mask.to(returns.dtype)


def informative_groups(scores: Tensor, group_size: int) -> Tensor:
    """[N / G] bool: the groups (contiguous, G samples each) whose scores are not all equal.

    A group whose responses all score alike has group-relative advantages of 0, so it gives no policy gradient and
    only dilutes the batch; DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2, eq. 11) drops it.
    """
    grouped = _groups(scores, group_size)
    return grouped.amax(dim=1) > grouped.amin(dim=1)


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), [B]: 0 up to max_len - buffer tokens, then
    falling linearly to -factor at max_len: -factor * clamp((|y| - (max_len - buffer)) / buffer, 0, 1)."""
    if not 0 < buffer <= max_len:
        raise ValueError(f"the overlong buffer must be in 1..max_len ({max_len}) tokens (got {buffer})")
    return -factor * ((lengths.float() - (max_len - buffer)) / buffer).clamp(0.0, 1.0)


def baseline_advantages(rewards: Tensor, baseline: Tensor) -> Tensor:
    """rewards - baseline, [B]. ReMax (Li et al. 2023) uses the reward of the greedy response as the baseline."""
    return rewards - baseline


# --- losses --------------------------------------------------------------------------------------------------
RATIO_LEVELS = ("token", "sequence")  # ops.variants.RatioLevel, as configs spell it


def sequence_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """GSPO's per-token log-ratio [B, T] (Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 7 and the
    GSPO-token form of sec. 4.3): its value on every token is the sequence's length-normalised log-ratio
    1/|y| sum_t log(pi_t / pi_old_t), and its gradient on token t is that of log pi_t scaled by nothing else, so
    exp() of it is s_i with grad s_i * grad log pi_t. Averaged over a response's tokens (seq_mean_token_mean) the
    gradient is GSPO's s_i * 1/|y| sum_t grad log pi_t; with one response token it is the token ratio."""
    seq = masked_mean(logprobs - old_logprobs, mask, dim=-1).detach().unsqueeze(-1)
    return seq + logprobs - logprobs.detach()


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    ratio_level: str = "token",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate per token [B, T], 0 where mask is 0, and its metrics.

    loss = -min(ratio A, clip(ratio, 1 - clip_eps, 1 + clip_eps_high) A), ratio = pi / pi_old (Schulman et al.
    2017, eq. 7); clip_eps_high defaults to clip_eps, a larger one is DAPO's clip-higher (Yu et al. 2025).
    ratio_level "sequence" makes the ratio (and so its clip) the sequence's length-normalised one, GSPO's
    (`sequence_log_ratio`); "token" is PPO's. advantages are [B, T] or [B] (one per sequence, broadcast over its
    tokens). Metrics, masked means: `clipfrac`, the share of tokens where the clipped term is the smaller one, so
    clipping changed the loss (TRL's pg_clipfrac); `approx_kl`, (ratio - 1) - log ratio of the tokens, the k3
    estimate of KL(old || new) (cleanrl); `ratio`.
    """
    if ratio_level not in RATIO_LEVELS:
        raise _unknown("importance ratio level", ratio_level, RATIO_LEVELS)
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    token_log_ratio = logprobs - old_logprobs
    log_ratio = sequence_log_ratio(logprobs, old_logprobs, mask) if ratio_level == "sequence" else token_log_ratio
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + high) * advantages
    loss = -torch.minimum(unclipped, clipped) * mask.to(unclipped.dtype)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped < unclipped).to(ratio.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(token_log_ratio) - token_log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float) -> Tensor:
    """0.5 max((V - R)^2, (V_old + clamp(V - V_old, -eps, eps) - R)^2) per token, 0 where mask is 0.

    Value clipping from OpenAI baselines' ppo2, as in cleanrl and TRL (Huang et al. 2022, "The 37
    Implementation Details of PPO", detail 9): the critic cannot move further than eps from its rollout value.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return loss * mask.to(loss.dtype)


# --- aggregation ---------------------------------------------------------------------------------------------
# Each returns one micro-batch's share of the step's aggregate: summed over the step's micro-batches (and ranks)
# it gives the aggregate over the whole step, because the normalisers are the step's global counts.
def _token_mean(loss: Tensor, mask: Tensor, num_tokens: float, num_sequences: float, max_len: int) -> Tensor:
    # every token weighs the same, so long responses weigh more (DAPO, Yu et al. 2025)
    return masked_sum(loss, mask) / num_tokens


def _seq_mean_token_mean(loss: Tensor, mask: Tensor, num_tokens: float, num_sequences: float, max_len: int) -> Tensor:
    # every sequence weighs the same whatever its length (GRPO, Shao et al. 2024, eq. 3)
    return masked_mean(loss, mask, dim=-1).sum() / num_sequences


def _seq_mean_token_sum_norm(
    loss: Tensor, mask: Tensor, num_tokens: float, num_sequences: float, max_len: int
) -> Tensor:
    # Dr. GRPO (Liu et al. 2025): a constant normaliser, the generation budget, so no length bias either way
    return (masked_sum(loss, mask, dim=-1) / max_len).sum() / num_sequences


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, float, float, int], Tensor]] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def aggregate(
    loss: Tensor, mask: Tensor, mode: str, *, num_tokens: float, num_sequences: float, max_len: int
) -> Tensor:
    """This micro-batch's share of the optimizer step's loss, a scalar, from a per-token loss [B, T].

    num_tokens (masked tokens) and num_sequences (rows) count the whole step, over micro-batches and ranks, so
    that summing the results of the step's micro-batches gives the aggregate of the step; max_len is the
    generation budget. The caller undoes DDP's averaging over ranks (multiply by the world size). A row with
    an empty mask adds 0 but still counts in num_sequences if the caller counted it.
    """
    if mode not in AGGREGATIONS:
        raise _unknown("loss aggregation", mode, list(AGGREGATIONS))
    return AGGREGATIONS[mode](loss, mask, num_tokens, num_sequences, max_len)


# --- diagnostics ---------------------------------------------------------------------------------------------
def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim, in float32: logsumexp(l) - sum(softmax(l) l).

    H = -sum p log p with log p = l - logsumexp(l). Logits must be finite (a -inf logit gives 0 * -inf = NaN).
    """
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(R - V) / Var(R) over the masked entries, population variances; 0 when Var(R) is 0.

    OpenAI baselines' `explained_variance`, logged by cleanrl: 1 is a perfect critic, 0 is no better than
    predicting the mean return, negative is worse.
    """
    with torch.no_grad():
        values, returns = values.float(), returns.float()
        var_returns = _masked_population_var(returns, mask)
        explained = 1 - _masked_population_var(returns - values, mask) / torch.where(var_returns > 0, var_returns, 1.0)
        return torch.where(var_returns > 0, explained, 0.0)


def _masked_population_var(x: Tensor, mask: Tensor) -> Tensor:
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


# --- KL coefficient controllers -------------------------------------------------------------------------------
class AdaptiveKLController:
    """The KL coefficient steered toward a target KL (Ziegler et al. 2019, sec. 2.2).

    error = clip(KL / target - 1, -0.2, 0.2); value *= 1 + error * n_steps / horizon. The clip bounds how fast
    the coefficient moves on a noisy KL estimate.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon

    # only the coefficient is state; target and horizon come from the (possibly edited) config on resume
    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class FixedKLController:
    """A constant KL coefficient with AdaptiveKLController's interface; update does nothing."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
