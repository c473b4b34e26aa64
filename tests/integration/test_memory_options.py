"""Options that trade memory for compute give the same numbers: `hardware.activation_checkpointing` (recompute
each block instead of keeping it, under every strategy) and `trainer.chunked_logprobs` (the LM head in chunks,
or the plain logits path it is tested against)."""

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


@pytest.mark.parametrize("algorithm", ["dpo", "grpo"])
def test_the_plain_logits_path_is_a_switch_with_the_same_numbers(
    algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trainer.chunked_logprobs: false` marks the run's models so that every log-prob (the policy's, the
    reference's, the sampler's scoring) takes the plain path; the losses agree with the chunked run's."""
    import alignkit.ops.lm_head as lm_head

    chunked_calls = []
    original = lm_head.chunked_token_logprobs

    def counting(*args: object, **kwargs: object) -> object:
        chunked_calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(lm_head, "chunked_token_logprobs", counting)
    losses, calls = [], []
    for chunked in (True, False):
        cfg = tiny_config(algorithm, tmp_path / str(chunked), eval_fraction=0.0, trainer={"chunked_logprobs": chunked})
        losses.append(read_run_record(run(cfg).run_dir)["metrics"]["train/loss"])
        calls.append(len(chunked_calls))
        chunked_calls.clear()
    assert calls[0] > 0 and calls[1] == 0
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


# The layouts each run's forwards take with both options on: SFT's rows and PPO's single samples have no prompt to
# share (packed rows); KTO's mismatched-pair forward has no partner; pairs and GRPO's groups share their prompts.
LAID_OUT = {
    "sft": {"packed"},
    "reward_model": {"shared"},
    "dpo": {"shared"},
    "kto": {"packed", "shared"},
    "ppo": {"packed"},
    "grpo": {"shared"},  # its update keeps each prompt's samples in one micro-batch
}


@pytest.mark.parametrize("algorithm", LAID_OUT)
def test_packed_rows_and_shared_prompts_train_to_the_same_losses(
    algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trainer.padding_free` and `trainer.shared_prompts` reach every forward of a run (the policy's, the
    reference's, a reward model's and a critic's, the sampler's scoring) and change no number: the losses of three
    steps equal the padded run's."""
    import alignkit.ops.lm_head as lm_head

    kinds: list[str] = []
    original = lm_head.lay_out

    def recording(*args: object, **kwargs: object) -> object:
        layout = original(*args, **kwargs)
        kinds.append(layout.kind)
        return layout

    monkeypatch.setattr(lm_head, "lay_out", recording)
    losses, seen = [], []
    for options in ({"padding_free": False}, {"padding_free": True, "shared_prompts": True}):
        cfg = tiny_config(algorithm, tmp_path / str(len(losses)), eval_fraction=0.0, trainer=options)
        losses.append(read_run_record(run(cfg).run_dir)["metrics"]["train/loss"])
        seen.append(set(kinds))
        kinds.clear()
    assert seen[0] == {"padded"}
    assert seen[1] == LAID_OUT[algorithm]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


# budgets that split these runs' steps unevenly (a DPO row holds a pair: about 100-130 tokens)
BUDGETS = {"sft": 100, "dpo": 250, "grpo": 100}


@pytest.mark.parametrize("algorithm", BUDGETS)
def test_a_token_budget_gives_the_whole_steps_loss(
    algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trainer.max_tokens_per_micro_batch` splits each step into micro-batches of unequal row counts, each loss
    weighted by its share: three steps' losses equal those of one micro-batch per step (SFT's token mean over
    the whole step included)."""
    from alignkit.algorithms.base import AlignModule

    sizes: list[int] = []
    original = AlignModule.budget_chunks

    def recording(self: AlignModule, *args: object, **kwargs: object) -> list[torch.Tensor]:
        chunks = original(self, *args, **kwargs)
        sizes.extend(len(c) for c in chunks)
        return chunks

    monkeypatch.setattr(AlignModule, "budget_chunks", recording)
    losses = []
    for budget in (None, BUDGETS[algorithm]):
        trainer = {"micro_batch_size": 4, "max_tokens_per_micro_batch": budget}
        cfg = tiny_config(algorithm, tmp_path / str(budget), eval_fraction=0.0, trainer=trainer)
        losses.append(read_run_record(run(cfg).run_dir)["metrics"]["train/loss"])
    assert len(set(sizes)) > 1 and max(sizes) < 4  # micro-batches of unequal sizes, each smaller than the step
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_kto_refuses_a_token_budget() -> None:
    with pytest.raises(ConfigError) as err:
        tiny_config("kto", Path("unused"), eval_fraction=0.0, trainer={"max_tokens_per_micro_batch": 100})
    assert "z0 is a mean over each micro-batch" in str(err.value)
