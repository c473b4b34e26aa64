"""Models train in train mode and frozen ones stay in eval mode (transformers hands models over in eval mode, and
Lightning keeps the mode it is given); dropout is off unless asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import minimal

from alignkit.algorithms import ALGORITHMS
from alignkit.config.load import validate_dict
from alignkit.models import byte_tokenizer, save_hf
from alignkit.run import run


def gpt2_with_dropout(directory: Path) -> str:
    """A saved GPT-2 with its config's default dropout, 0.1 (alignkit's `architecture: gpt2` builds it with 0)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = byte_tokenizer()
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128)
    config.pad_token_id, config.eos_token_id, config.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    return str(save_hf(GPT2LMHeadModel(config), tok, directory))


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_the_policy_trains_in_train_mode_and_the_reference_stays_frozen(
    disable_dropout: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module_cls = ALGORITHMS.get("dpo").load()
    seen: list[dict[str, Any]] = []
    original = module_cls.training_step

    def record(self: Any, batch: dict, idx: int) -> torch.Tensor:
        dropouts = [m.p for m in self.policy.modules() if isinstance(m, torch.nn.Dropout)]
        seen.append({"policy": self.policy.training, "reference": self.reference.training, "p": set(dropouts)})
        return original(self, batch, idx)

    monkeypatch.setattr(module_cls, "training_step", record)
    cfg = minimal("dpo")
    cfg.update(
        policy={"path": gpt2_with_dropout(tmp_path / "gpt2")},
        data={**cfg["data"], "eval_fraction": 0.25},
        trainer={
            "max_steps": 2,
            "prompts_per_step": 4,
            "micro_batch_size": 4,
            "eval_every_n_steps": 1,
            "disable_dropout": disable_dropout,
        },
        hardware={"accelerator": "cpu", "strategy": "single", "activation_checkpointing": True},
        logging={"root": str(tmp_path / "runs"), "progress_bar": False},
        checkpoint={"export_hf": False},
    )
    run(validate_dict(cfg))
    assert len(seen) == 2  # the second step after an evaluation, which must hand the train mode back
    for step in seen:
        assert step["policy"] and not step["reference"]
        assert step["p"] == ({0.0} if disable_dropout else {0.1})
