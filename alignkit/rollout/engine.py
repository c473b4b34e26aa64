"""The rollout engine contract: what an engine receives, what it returns, and when the policy's weights change.

An engine turns left-padded prompts into a `Rollout`. `OnlineModule.sample()` is the only caller during
training (every online algorithm, and their evaluation), and `compare` calls it for held-out prompts. Adding an
engine is one file: a `RolloutEngine` subclass, and its card in `alignkit/rollout/__init__.py`, which
`rollout.engine` then accepts.

The contract, call by call:

- `generate(model, prompt_ids, prompt_mask, params)`:
  - `model`: the policy as it trains, a transformers causal LM (possibly FSDP-sharded, with LoRA layers
    injected, under the run's autocast). An in-process engine runs it as it is.
  - `prompt_ids`, `prompt_mask`: [B, P] on the model's device, left-padded, each row with at least one real
    token in its last column (`rollout.check_prompts`).
  - `params` (`SamplingParams`): num_samples G, max_new_tokens, temperature, top_p, greedy, the EOS and pad
    ids, and `synced`: other ranks generate in step (a sharded model's forwards are collectives, so every rank
    must keep calling the model until all ranks are done).
  - Returns the `Rollout` of B*G rows, row i*G + j being sample j of prompt i: the prompt block unchanged, each
    response up to and including its first EOS, then padding; `finished` says which ended with EOS. With
    `returns_logprobs`, `Rollout.logprobs` holds each response token's log-probability under
    softmax(logits / temperature) in float32, the distribution `rollout.score` computes (also under top-p,
    which only restricts the draw), 0 off the response.
  - Randomness comes from torch's global generator, which the run seeds per rank.
  - The model leaves in the modes (train/eval) it came in, and without gradients recorded.
- `load_weights(model)`: called before a `generate` whenever the policy's weights changed since the engine last
  saw them (after every iteration's optimizer steps; not between the samples of one iteration). An engine that
  runs the model in place needs nothing; one that holds its own copy (a separate inference server) copies the
  weights here, gathering sharded ones first.

Log-probs returned by an engine are used as the policy's old log-probs (PPO's ratio and KL reward, GRPO with
more than one update) when `rollout.reuse_logprobs` allows it, instead of a second forward over the samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from alignkit.rollout.rollout import Rollout, SamplingParams


class RolloutEngine(ABC):
    """Samples responses for the policy; see the module docstring for the contract."""

    name: ClassVar[str]
    returns_logprobs: ClassVar[bool] = False  # Rollout.logprobs is filled

    @abstractmethod
    def generate(
        self, model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, params: SamplingParams
    ) -> Rollout:
        """Sample params.num_samples responses per left-padded prompt."""

    def load_weights(self, model: torch.nn.Module) -> None:
        """The policy's weights changed since the last `generate`: an engine holding its own copy refreshes it."""
        return None  # a hook: in-process engines read the model's weights in place


def reuses_logprobs(choice: bool | str, *, exact: bool) -> bool:
    """rollout.reuse_logprobs resolved: true or false as set; `auto` where an engine's log-probs equal scoring's to
    float32 rounding (`exact`: float32 weights and compute, and no dropout in the scoring forward)."""
    return exact if choice == "auto" else bool(choice)


def build_engine(spec: Any) -> RolloutEngine:
    """The engine a `rollout:` section names (RolloutSpec), with its options."""
    from alignkit.rollout import ENGINES

    return ENGINES.get(spec.engine).load()(spec)
