"""Sources: fixed offline splits, the hub path (stubbed) and local files, and bad files named.

The split checksums are md5 over the sorted JSON rows of each split, so they pin which rows are in
which split and their content (text, label) on every machine.
"""

import hashlib
import json
import re

import pytest

from harness.data import build_task, load_examples
from tests.data.helpers import preset, write_csv


def rows_md5(ds) -> str:
    return hashlib.md5("\n".join(sorted(json.dumps(r, sort_keys=True) for r in ds)).encode()).hexdigest()[:12]


# name: (split sizes, row checksums, first example ids of train, the group column)


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
