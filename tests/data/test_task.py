"""build_task end to end: the fields scoring reads, a local CSV task, and bad labels named before tokenizing."""

import pytest

from harness.data import build_task
from tests.data.helpers import preset, write_csv


def test_build_task_classification_fields(rotten):
    assert (len(rotten.train), len(rotten.eval), len(rotten.test)) == (96, 32, 32)
    assert rotten.label_names == ["rotten", "fresh"] and rotten.num_labels == 2
    assert rotten.main_metric == "accuracy" and rotten.greater_is_better and rotten.metrics == ["accuracy", "f1"]
    # labels: fresh -> 1, rotten -> 0, row for row
    assert rotten.train["labels"] == [int(v == "fresh") for v in rotten.raw["train"]["label"]]
    # limits take the first rows of the fixed order
    assert rotten.raw["train"]["example_id"][:3] == ["5329", "1970", "9700"]  # as in test_sources.OFFLINE


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
