"""`hardware.activation_checkpointing`: recompute instead of keep, under every strategy, with the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from transformers import LlamaConfig, LlamaForCausalLM

import alignkit.hardware
from alignkit.config.errors import ConfigError
from alignkit.config.load import validate_dict
from alignkit.hardware import activation_checkpointing
from alignkit.run import run
from alignkit.rundir import read_run_record


def test_checkpointed_blocks_give_the_same_gradients() -> None:
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    torch.manual_seed(0)
    plain, checkpointed = LlamaForCausalLM(config), LlamaForCausalLM(config)
    checkpointed.load_state_dict(plain.state_dict())
    assert activation_checkpointing(checkpointed) and checkpointed.is_gradient_checkpointing
    assert not activation_checkpointing(torch.nn.Linear(2, 2))  # nothing to switch on: says so
    ids = torch.randint(0, 300, (2, 10))
    for model in (plain, checkpointed):
        model.train()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_a_single_process_run_with_checkpointing_trains_to_the_same_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    switched = []
    monkeypatch.setattr(
        alignkit.hardware, "activation_checkpointing", lambda m: switched.append(m) or activation_checkpointing(m)
    )
    losses = []
    for flag in (False, True):
        cfg = tiny_config("sft", tmp_path / str(flag), eval_fraction=0.0, hardware={"activation_checkpointing": flag})
        losses.append(read_run_record(run(cfg).run_dir)["metrics"]["train/loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert [type(m).__name__ for m in switched] == ["LlamaForCausalLM"]  # the trained policy, in the second run


def test_the_old_fsdp_key_says_where_it_moved() -> None:
    with pytest.raises(ConfigError) as err:
        validate_dict(
            {
                "name": "t",
                "algorithm": {"name": "sft"},
                "policy": {"preset": "tiny-llama"},
                "data": {"train": {"generator": "reverse_words"}},
                "hardware": {"fsdp": {"activation_checkpointing": True}},
            }
        )
    assert "moved to hardware.activation_checkpointing" in str(err.value)
