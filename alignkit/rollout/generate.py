"""The `hf` rollout engine: Hugging Face `generate`, as it samples for any causal LM transformers can run."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import GenerationConfig

from alignkit.models.modes import eval_mode
from alignkit.ops.logprobs import position_ids
from alignkit.rollout.engine import RolloutEngine
from alignkit.rollout.rollout import Rollout, SamplingParams, check_prompts, rollout_from_sequences


class HFEngine(RolloutEngine):
    """transformers' `generate`: every prompt repeated G times, a growing cache, finished rows decoded as
    padding until the longest stops. Works for every model `generate` supports; returns no log-probs."""

    name = "hf"

    def __init__(self, spec: Any = None) -> None:
        pass

    def generate(
        self, model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, params: SamplingParams
    ) -> Rollout:
        check_prompts(prompt_ids, prompt_mask, params)
        g = params.num_samples
        if g > 1:
            prompt_ids = prompt_ids.repeat_interleave(g, dim=0)
            prompt_mask = prompt_mask.repeat_interleave(g, dim=0)
        # generate fills every option we leave unset from model.generation_config, which a checkpoint's
        # generation_config.json can set (repetition_penalty, top_k, suppress_tokens, ...): any of those would
        # sample from a distribution other than the one `score` computes.
        saved_config = model.generation_config
        model.generation_config = GenerationConfig()
        try:
            # no_grad, not inference_mode: the sequences feed forwards that need gradients later.
            with eval_mode(model), torch.no_grad():
                sequences = model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    # The positions `model_logits` gives when scoring; transformers 5 infers the same ones from the
                    # mask, but passing them keeps sampling and scoring agreeing whatever generate infers.
                    position_ids=position_ids(prompt_mask),
                    generation_config=_generation_config(params),
                    synced_gpus=params.synced,
                )
        finally:
            model.generation_config = saved_config
        return rollout_from_sequences(sequences, prompt_mask, params.eos_token_id, params.pad_token_id)


def _generation_config(params: SamplingParams) -> GenerationConfig:
    # top_k=0: transformers' global default is top_k=50, which would truncate the distribution that `score`
    # assumes was sampled.
    sampling = {} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=0,
        do_sample=not params.greedy,
        num_beams=1,
        num_return_sequences=1,
        eos_token_id=params.eos_token_id,
        pad_token_id=params.pad_token_id,
        use_cache=True,
        **sampling,
    )


def generate(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, **params: Any) -> Rollout:
    """Sample with `generate` (the `hf` engine); `params` are SamplingParams' fields. Row i*G + j is sample j of
    prompt i. `greedy` takes the argmax; otherwise tokens are drawn from softmax(logits / temperature), cut to the
    top_p nucleus, with torch's global RNG."""
    return HFEngine().generate(model, prompt_ids, prompt_mask, SamplingParams(**params))
