"""The stdlib-trained BPE tokenizer: vocabulary, round trips, merges, ChatML, masks through the data layer, cache.

Most tests share one tokenizer from the default cache (~/.cache/alignkit, or $ALIGNKIT_CACHE): the first run on
a machine trains it (seconds), later runs load it, as `load_tokenizer` does for the `tiny-qwen2-bpe` preset.
One test builds a fresh copy in an empty temporary cache to check the build itself.
"""

from __future__ import annotations

import os
import sysconfig
import time
from pathlib import Path

import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

import alignkit.data.tokenization
from alignkit.data import tokenize_records
from alignkit.models import ModelSpec, bpe_tokenizer, load_tokenizer
from alignkit.models import tokenizer as tokenizer_module

PROMPT = [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Name a prime."}]
CHOSEN, REJECTED = "Seven is prime.", "Nine, I think."


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return bpe_tokenizer()


def ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def trained(row_ids: list[int], mask: list[int]) -> list[int]:
    return [t for t, m in zip(row_ids, mask, strict=True) if m]


# -- the vocabulary ---------------------------------------------------------------------------------------------


def test_vocabulary_special_tokens_and_what_encode_adds(tok: PreTrainedTokenizerFast) -> None:
    """32,000 tokens; the ChatML tokens are single ids, also inside text; pad, EOS and no BOS as Qwen 2.5."""
    assert len(tok) == 32_000
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<|endoftext|>", "<|im_end|>", None)
    assert ids(tok, "a<|im_start|>b<|im_end|>") == [*ids(tok, "a"), 1, *ids(tok, "b"), 2]
    assert tok("hello")["input_ids"] == ids(tok, "hello")  # no BOS, no EOS added
    assert tok.decode([1, *ids(tok, "hi"), 2, 0], skip_special_tokens=True) == "hi"


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_any_text_round_trips(tok: PreTrainedTokenizerFast, text: str) -> None:
    assert tok.decode(ids(tok, text)) == text


def test_code_and_unicode_round_trip(tok: PreTrainedTokenizerFast) -> None:
    for text in ["def f(x):\n\treturn x  # é\r\n", "世界 🙂 e\u0301 \x00\x7f", "  leading and trailing  ", "a , b ."]:
        assert tok.decode(ids(tok, text)) == text


def test_it_merges_python_it_was_not_trained_on(tok: PreTrainedTokenizerFast) -> None:
    """alignkit's own source is not in the training text; a byte tokenizer would give 1 token per byte."""
    text = Path(alignkit.data.tokenization.__file__).read_text()
    per_byte = len(ids(tok, text)) / len(text.encode())
    assert per_byte < 0.4, per_byte
    # GPT-2's pre-tokenizer regex leaves a word its leading space (and an indent its other spaces)
    assert tok.convert_ids_to_tokens(ids(tok, "    return self")) == ["ĠĠĠ", "Ġreturn", "Ġself"]


# -- ChatML -------------------------------------------------------------------------------------------------------


def test_chatml_rendering_is_qwens_but_for_the_final_newline(tok: PreTrainedTokenizerFast) -> None:
    messages = [*PROMPT, {"role": "assistant", "content": CHOSEN}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nAnswer in one line.<|im_end|>\n<|im_start|>user\nName a prime.<|im_end|>\n"
        "<|im_start|>assistant\nSeven is prime.<|im_end|>"
    )
    with_prompt = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert with_prompt.endswith("Name a prime.<|im_end|>\n<|im_start|>assistant\n")
    # what the data layer relies on: each prefix renders as a prefix of the whole, and so does the one before an
    # assistant turn with the generation prompt
    whole = tok.apply_chat_template(messages, tokenize=False)
    for i in range(1, len(messages) + 1):
        assert whole.startswith(tok.apply_chat_template(messages[:i], tokenize=False))
    assert whole.startswith(with_prompt)


def test_conversational_preferences_share_the_prompt_and_train_content_and_im_end(
    tok: PreTrainedTokenizerFast,
) -> None:
    """chosen and rejected begin with the same ids, those of the prompt rendered with the generation prompt,
    and exactly the assistant's content plus <|im_end|> is trained (no newline after it)."""
    rows = [
        {
            "prompt": PROMPT,
            "chosen": [{"role": "assistant", "content": CHOSEN}],
            "rejected": [{"role": "assistant", "content": REJECTED}],
        }
    ]
    row = tokenize_records(Dataset.from_list(rows), "preference", tok, max_length=256)[0]
    prompt_ids = ids(tok, tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True))
    for side, content in [("chosen", CHOSEN), ("rejected", REJECTED)]:
        row_ids, mask = row[f"{side}_input_ids"], row[f"{side}_completion_mask"]
        assert row_ids == prompt_ids + ids(tok, content) + [tok.eos_token_id]
        assert mask == [0] * len(prompt_ids) + [1] * (len(row_ids) - len(prompt_ids))
        assert tok.decode(trained(row_ids, mask)) == content + "<|im_end|>"


def test_conversational_sft_trains_every_assistant_turn_and_its_end(tok: PreTrainedTokenizerFast) -> None:
    messages = [
        {"role": "user", "content": "Reverse: cat dog"},
        {"role": "assistant", "content": "dog cat"},
        {"role": "user", "content": "Reverse: sun sky"},
        {"role": "assistant", "content": "sky sun"},
    ]
    row = tokenize_records(Dataset.from_list([{"messages": messages}]), "completion", tok, max_length=256)[0]
    row_ids, mask = row["input_ids"], row["completion_mask"]
    assert tok.decode(row_ids) == tok.apply_chat_template(messages, tokenize=False)
    assert trained(row_ids, mask) == [*ids(tok, "dog cat"), 2, *ids(tok, "sky sun"), 2]


def test_conversational_prompt_rows_end_with_the_generation_prompt(tok: PreTrainedTokenizerFast) -> None:
    row = tokenize_records(Dataset.from_list([{"prompt": PROMPT}]), "prompt", tok, max_length=256)[0]
    assert row["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert row["prompt_input_ids"] == ids(tok, row["prompt"])


# -- plain text -------------------------------------------------------------------------------------------------


def test_merges_never_cross_the_prompt_completion_boundary_and_eos_ends_it(tok: PreTrainedTokenizerFast) -> None:
    """The prompt ends inside a word: tokenized whole, " return" is one token; tokenized in two pieces, the
    prompt keeps the ids it has alone (" ret") and the completion starts a token of its own ("urn")."""
    prompt, completion = "def f():\n    ret", "urn 1"
    assert ids(tok, prompt + completion) != ids(tok, prompt) + ids(tok, completion)  # it would have merged
    assert tok.convert_ids_to_tokens(ids(tok, prompt))[-1] == "Ġret"
    rows = [{"prompt": prompt, "completion": completion}]
    row = tokenize_records(Dataset.from_list(rows), "completion", tok, max_length=64)[0]
    n = len(ids(tok, prompt))
    assert row["input_ids"] == ids(tok, prompt) + ids(tok, completion) + [tok.eos_token_id]
    assert row["completion_mask"] == [0] * n + [1] * (len(row["input_ids"]) - n)
    pref = [{"prompt": prompt, "chosen": completion, "rejected": "urn 2"}]
    pair = tokenize_records(Dataset.from_list(pref), "preference", tok, max_length=64)[0]
    assert pair["chosen_input_ids"][:n] == pair["rejected_input_ids"][:n] == ids(tok, prompt)


# -- loading and the cache ----------------------------------------------------------------------------------------


def test_the_spec_selects_it_and_it_travels_with_a_saved_model(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    spec = ModelSpec(architecture="qwen2", tokenizer="bpe")
    loaded = load_tokenizer(spec)
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert ids(loaded, text) == ids(tok, text)
    loaded.save_pretrained(tmp_path)  # what save_hf writes beside the weights
    again = load_tokenizer(ModelSpec(path=str(tmp_path)))
    assert again.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True) == text
    assert ids(again, text) == ids(tok, text) and (again.pad_token_id, again.eos_token_id) == (0, 2)


def test_a_fresh_build_is_cached_atomically_and_reloads_to_the_same_ids(
    tok: PreTrainedTokenizerFast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training is deterministic: a build in an empty cache gives the ids of the shared one; it lands in
    bpe-<hash of its inputs> with no temporary directory left, and loads from there in well under a second."""
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    built = bpe_tokenizer()
    (directory,) = tmp_path.iterdir()
    assert directory.name.startswith("bpe-") and (directory / "tokenizer.json").is_file()
    start = time.perf_counter()
    cached = bpe_tokenizer()
    assert time.perf_counter() - start < 1.0
    text = Path(alignkit.data.tokenization.__file__).read_text()
    assert ids(built, text) == ids(cached, text) == ids(tok, text)
    # a second process that finished training later loses the rename and drops its copy
    tokenizer_module._save_atomically(cached, directory)
    assert list(tmp_path.iterdir()) == [directory]
    assert ids(PreTrainedTokenizerFast.from_pretrained(directory), text) == ids(tok, text)


def test_the_cache_name_follows_the_training_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    files = [("abc.py", 10), ("json/decoder.py", 20)]
    name = tokenizer_module._fingerprint(files)
    assert tokenizer_module._fingerprint([("abc.py", 11), ("json/decoder.py", 20)]) != name
    monkeypatch.setattr(tokenizer_module.platform, "python_version", lambda: "3.99.0")
    assert tokenizer_module._fingerprint(files) != name


def test_the_training_files_are_sorted_stdlib_sources_without_tests_or_installed_packages() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = tokenizer_module._training_files(root)
    names = [name for name, _ in files]
    assert names == sorted(names) and "json/decoder.py" in names
    assert not any(set(Path(n).parts) & {"site-packages", "test", "tests", "encodings"} for n in names)
    assert 1_000_000 < sum(size for _, size in files) <= tokenizer_module._MAX_TRAINING_BYTES
    assert all(os.path.getsize(root / n) == size for n, size in files)
