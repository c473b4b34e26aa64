"""Registered model architectures: how ModelSpec's generic size fields map onto each transformers config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignkit.registry import Registry

# ModelSpec's size fields, in the order they are reported.
SIZE_FIELDS = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "max_position_embeddings",
)


@dataclass(frozen=True)
class Architecture:
    """A transformers `model_type`, the names its config gives our size fields, and tiny default sizes.

    The config class is found by name (`AutoConfig.for_model`) when a model is built, so validating a
    spec never imports transformers.
    """

    model_type: str
    names: dict[str, str]  # generic size field -> the config's own argument name
    defaults: dict[str, int]  # generic size field -> default (same keys as `names`)
    fixed: dict[str, Any] = field(default_factory=dict)  # config arguments we always set

    def sizes(self, overrides: dict[str, int | None]) -> dict[str, int]:
        """The effective generic sizes: the defaults, with every non-None override on top."""
        return {k: v if overrides.get(k) is None else overrides[k] for k, v in self.defaults.items()}

    def config_kwargs(self, overrides: dict[str, int | None]) -> dict[str, Any]:
        """Keyword arguments for this architecture's config class."""
        return {**self.fixed, **{self.names[k]: v for k, v in self.sizes(overrides).items()}}


ARCHITECTURES: Registry[Architecture] = Registry("model architecture")

_LLAMA_NAMES = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
}
# ~100k parameters with the 259-token byte vocabulary: fast enough for every unit test.
_TINY = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
}

ARCHITECTURES.add(
    "llama",
    Architecture("llama", _LLAMA_NAMES, _TINY),
    "Llama: RMSNorm, SwiGLU MLP, rotary positions, grouped-query attention, untied embeddings",
)
ARCHITECTURES.add(
    "qwen2",
    Architecture("qwen2", _LLAMA_NAMES, _TINY),
    "Qwen2: Llama's layout plus biases on the q/k/v projections",
)
ARCHITECTURES.add(
    "gpt2",
    Architecture(
        "gpt2",
        {
            "hidden_size": "n_embd",
            "num_layers": "n_layer",
            "num_heads": "n_head",
            "intermediate_size": "n_inner",
            "max_position_embeddings": "n_positions",
        },
        {k: v for k, v in _TINY.items() if k != "num_kv_heads"} | {"intermediate_size": 256},
        # GPT-2 is the one architecture here with dropout on by default; RLHF ratios and KL terms
        # need the same forward twice, so it is off as in the others.
        fixed={"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0},
    ),
    "GPT-2: LayerNorm, GELU MLP, learned absolute positions, tied embeddings",
)
