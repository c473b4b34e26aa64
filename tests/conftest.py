"""Shared test helpers: writing YAML files and a minimal valid config per algorithm."""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# The smallest valid config of each registered algorithm (tiny model, generated data), for config tests.
MINIMAL: dict[str, dict[str, Any]] = {
    "sft": {
        "name": "t",
        "algorithm": {"name": "sft"},
        "policy": {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        "data": {"train": {"generator": "reverse_words", "args": {"n": 64}}, "max_length": 64},
    },
    "reward_model": {
        "name": "t",
        "algorithm": {"name": "reward_model"},
        "reward_model": {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        "data": {"train": {"generator": "sentiment_pairs", "args": {"n": 64}}, "max_length": 64},
    },
    "dpo": {
        "name": "t",
        "algorithm": {"name": "dpo"},
        "policy": {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        "data": {"train": {"generator": "sentiment_pairs", "args": {"n": 64}}, "max_length": 64},
    },
    **{
        name: {
            "name": "t",
            "algorithm": {"name": name},
            "policy": {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
            "data": {"train": {"generator": "sentiment_pairs", "args": {"n": 64}}, "max_length": 64},
        }
        for name in ("simpo", "orpo", "cpo")  # reference-free, on pairs as DPO
    },
    "kto": {
        "name": "t",
        "algorithm": {"name": "kto"},
        "policy": {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        "data": {"train": {"generator": "sentiment_unpaired", "args": {"n": 64}}, "max_length": 64},
    },
    **{
        name: {
            "name": "t",
            "algorithm": {"name": name, "max_new_tokens": 6, **extra},
            "policy": {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
            "reward": {"source": {"kind": "rule", "name": "length_target", "args": {"target": 4}}},
            "data": {"train": {"generator": "reverse_words", "args": {"n": 64}}, "max_length": 64},
        }
        for name, extra in [
            ("ppo", {"update_epochs": 2}),
            ("grpo", {"samples_per_prompt": 2}),
            ("rloo", {"samples_per_prompt": 2}),
            ("reinforce_pp", {}),
            ("dapo", {"samples_per_prompt": 2}),
            ("remax", {}),
            ("reinforce", {}),
            ("rejection_sampling", {"samples_per_prompt": 2}),
            ("online_dpo", {}),
        ]
    },
    "bandit_study": {
        "name": "t",
        "algorithm": {
            "name": "bandit_study",
            "env": {"kind": "linear", "num_eval_states": 500},
            "n": [10],
            "m_ratio": [1.0],
            "seeds": [0, 1],
            "budgets": [{"name": "adagrad_norm", "iterations": 20}],
            "log_every": 5,
        },
    },
}


def minimal(algo: str = "sft", /, **sections: Any) -> dict[str, Any]:
    """A fresh copy of MINIMAL[algo] with whole sections replaced (None removes one)."""
    data = copy.deepcopy(MINIMAL[algo])
    for key, value in sections.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def tiny_config(algorithm: str, root: Path, /, *, eval_fraction: float, **overrides: Any) -> Any:
    """A validated MINIMAL[algorithm] for 3 quick steps on CPU under `root`, sections merged with `overrides`."""
    from alignkit.config.load import validate_dict

    data = minimal(algorithm)
    data["data"] = {**data["data"], "eval_fraction": eval_fraction}
    data.update(
        trainer={"max_steps": 3, "prompts_per_step": 4, "micro_batch_size": 4, "log_every_n_steps": 1},
        hardware={"accelerator": "cpu", "strategy": "single"},
        logging={"root": str(root), "progress_bar": False},
        checkpoint={"export_hf": False},
    )
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_dict(data)


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[str, str], Path]:
    """write_yaml("dir/x.yaml", text) -> the path, with the text dedented."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write


# What Lightning, datasets and transformers print by themselves, none of which belongs on the terminal:
# device lines, adverts, the ModelCheckpoint manual-optimization warning, tqdm bars, rich tables and bars.
NOISE = (
    "GPU available",
    "Tip",
    "litlogger",
    "ModelCheckpoint",
    "Flattening",
    "%|",
    "Writing model shards",
    "Trainable params",
    "┃",
    "│",
    "━",
    "\r",
    "Epoch 0",
)


def assert_quiet(text: str) -> None:
    found = [noise for noise in NOISE if noise in text]
    assert not found, f"library output on the terminal: {found}\n{text}"


def make_bigram(model: Any, successor: dict[int, int]) -> Any:
    """Set a llama-shaped causal LM's weights so that its greedy next token is successor[current token], whatever
    came before: attention and MLP outputs are zeroed, so the last hidden state is RMSNorm(embedding of the
    current token); token k of the table embeds as the basis vector e_k and the head row of its successor is
    10 e_k, so the successor's logit is 10 x RMSNorm's scale (sqrt(width)) and every other logit 0."""
    import torch

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (token, nxt) in enumerate(successor.items()):
            model.model.embed_tokens.weight[token, k] = 1.0
            model.lm_head.weight[nxt, k] = 10.0
    return model
