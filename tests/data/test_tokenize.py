"""Tokenization: truncation counted, the on-disk cache reused, the tokenizer fingerprint, causal-LM masking."""

import json
import logging

import pytest

import harness.data.tokenize as tokenize
from harness.data import IGNORE_INDEX, build_task, encode_prompt, tokenizer_fingerprint
from tests.data.helpers import SEP, preset


def test_truncation_is_counted_and_warned_once(tokenizer, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="harness.data.task"):
        task = build_task(preset("bbc_news", limit_train=20, limit_eval=5, cache_dir=cache), tokenizer, seed=0,
                          max_length=64)
    warnings = [r.getMessage() for r in caplog.records if r.name == "harness.data.task"]
    n_cut = sum(task.train["truncated"]) + sum(task.eval["truncated"]) + sum(task.test["truncated"])
    assert len(warnings) == 1 and n_cut == 30  # every BBC article is longer than 64 tokens
    assert "train 20 / eval 5 / test 5" in warnings[0] and "max_length=64" in warnings[0]
    assert max(task.train["length"]) == 64 and all(ids[-1] == SEP for ids in task.train["input_ids"])
    assert task.metric_kwargs == {"f1": {"average": "macro"}}


def test_tokenization_cache_is_reused(tokenizer, tmp_path, monkeypatch):
    cfg = preset("rotten_tomatoes", limit_train=40, limit_eval=10, cache_dir=str(tmp_path))
    first = build_task(cfg, tokenizer, seed=0)
    files = sorted(p.name for p in tmp_path.rglob("*.arrow"))
    assert len(files) == 3 and files[1].startswith("test-")

    def must_not_run(*args, **kwargs):
        raise AssertionError("tokenized again despite a cache hit")

    monkeypatch.setattr(tokenize, "_encode_pairs", must_not_run)
    second = build_task(cfg, tokenizer, seed=0)
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.train.cache_files[0]["filename"] == first.train.cache_files[0]["filename"]
    with pytest.raises(AssertionError, match="tokenized again"):  # another max_length is another key
        build_task(cfg, tokenizer, seed=0, max_length=32)


def test_tokenizer_fingerprint_ignores_call_state_but_not_the_template(tokenizer, chat_tokenizer):
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c d e f"], truncation=True, max_length=3)  # leaves truncation state in the backend
    assert tokenizer_fingerprint(tokenizer) == before
    assert tokenizer_fingerprint(chat_tokenizer) != before


# Causal LM: loss on response tokens only.


def causal_task(tokenizer, tmp_path, pairs, **overrides):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in pairs))
    cfg = preset("chatterbot", source="files", data_files={"train": str(path), "eval": str(path)},
                 prompt_column="q", response_column="a", cache_dir=str(tmp_path / "c"), **overrides)
    return build_task(cfg, tokenizer, seed=0)


def test_causal_labels_mask_the_prompt_without_template(tokenizer, tmp_path):
    task = causal_task(tokenizer, tmp_path, [("hello there", "general kenobi"), ("why", "because")])
    row = task.train[0]
    prompt = tokenizer("hello there\n", add_special_tokens=False)["input_ids"]
    response = tokenizer("general kenobi", add_special_tokens=False)["input_ids"] + [SEP]  # BERT: no eos
    assert row["input_ids"] == prompt + response
    assert row["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert "token_type_ids" not in row
    batch = task.collate([task.train[0], task.train[1]])
    width = len(prompt) + len(response)
    assert batch["labels"].shape == (2, width)
    short = len(task.train[1]["input_ids"])
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all() and (batch["attention_mask"][1, short:] == 0).all()


def test_causal_labels_follow_the_chat_template(chat_tokenizer, tmp_path):
    task = causal_task(chat_tokenizer, tmp_path, [("hello there", "general kenobi")])
    row = task.train[0]
    prompt = encode_prompt(chat_tokenizer, "hello there")
    assert chat_tokenizer.decode(prompt) == "< user > hello there [SEP] < assistant >"
    n = len(prompt)
    assert row["input_ids"][:n] == prompt and row["labels"][:n] == [IGNORE_INDEX] * n
    # the assistant turn as the template writes it, ending in its own [SEP] (no second end token)
    assert chat_tokenizer.decode(row["labels"][n:]) == "general kenobi [SEP]"
    assert row["labels"][n:] == row["input_ids"][n:]


def test_causal_truncation_keeps_response_tokens(tokenizer, tmp_path):
    long_prompt = " ".join(f"w{i}" for i in range(40))
    task = causal_task(tokenizer, tmp_path, [(long_prompt, "short answer")], max_length=16)
    row = task.train[0]
    assert len(row["input_ids"]) == 16 and row["truncated"]
    answer = tokenizer("short answer", add_special_tokens=False)["input_ids"] + [SEP]
    assert row["input_ids"][-len(answer):] == answer and row["labels"][-len(answer):] == answer
