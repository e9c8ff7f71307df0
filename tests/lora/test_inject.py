"""apply_lora on the tiny models (tests/conftest.py): which layers, step-0 outputs, what trains, merge, unload."""

import pytest
import torch
import torch.nn as nn
from transformers import BertForSequenceClassification
from transformers.pytorch_utils import Conv1D

from harness import tiny
from harness.lora import (LoraConfig, apply_lora, linear_module_names, lora_layers, merge_lora, unload_lora,
                          unmerge_lora)
from tests.lora.helpers import BERT_QV, ids, randomize_adapters


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_step0_output_equals_base_exactly(tiny_bert, init):
    x = ids()
    y0 = tiny_bert(x).logits
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, init=init))
    assert torch.equal(tiny_bert(x).logits, y0)  # B = 0: bitwise equal, not just close


def test_step0_pissa_output_equals_base(tiny_llama):
    x = ids()
    y0 = tiny_llama(x).logits
    apply_lora(tiny_llama, LoraConfig(r=4, alpha=8, target_modules="all-linear", init="pissa"))
    torch.testing.assert_close(tiny_llama(x).logits, y0, atol=1e-5, rtol=0)


def test_conv1d_path_on_tiny_gpt2(tiny_gpt2):
    x = ids()
    y0 = tiny_gpt2(x).logits
    names = apply_lora(tiny_gpt2, LoraConfig(r=4, alpha=8, target_modules=["c_attn"]))
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    layer = tiny_gpt2.transformer.h[0].attn.c_attn
    assert isinstance(layer.base, Conv1D) and (layer.in_features, layer.out_features) == (32, 96)
    assert torch.equal(tiny_gpt2(x).logits, y0)
    randomize_adapters(tiny_gpt2)
    y1 = tiny_gpt2(x).logits
    assert not torch.allclose(y1, y0, atol=1e-3)
    merge_lora(tiny_gpt2)
    torch.testing.assert_close(tiny_gpt2(x).logits, y1, atol=1e-5, rtol=0)


def test_all_linear_on_llama_excludes_lm_head(tiny_llama):
    names = apply_lora(tiny_llama, LoraConfig(r=2, alpha=4, target_modules="all-linear"))
    projs = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert names == sorted(f"model.layers.{i}.{p}" for i in (0, 1) for p in projs)
    assert type(tiny_llama.lm_head) is nn.Linear and tiny_llama.lm_head.weight.requires_grad is False


def test_all_linear_on_bert_excludes_classifier_and_modules_to_save(tiny_bert):
    names = apply_lora(tiny_bert, LoraConfig(r=2, alpha=4, target_modules="all-linear",
                                             modules_to_save=["classifier", "pooler"]))
    assert len(names) == 12  # 2 layers x (query, key, value, attn out, intermediate, out)
    assert not any("pooler" in n or "classifier" in n for n in names)
    assert all(p.requires_grad for p in tiny_bert.bert.pooler.parameters())
    assert all(p.requires_grad for p in tiny_bert.classifier.parameters())


def test_query_value_default_resolves_per_model_family(tiny_bert, tiny_llama, tiny_gpt2):
    assert apply_lora(tiny_bert, LoraConfig()) == BERT_QV
    assert tiny_bert.lora_config.target_modules == ("query", "value")  # what adapter_config.json records
    assert apply_lora(tiny_llama, LoraConfig()) == [f"model.layers.{i}.self_attn.{m}" for i in (0, 1)
                                                    for m in ("q_proj", "v_proj")]
    # fused q, k, v
    assert apply_lora(tiny_gpt2, LoraConfig()) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    # An explicit list always wins over the family default.
    bert = tiny.tiny_bert()
    assert apply_lora(bert, LoraConfig(target_modules=["key"])) == [n.replace("value", "key") for n in BERT_QV[1::2]]


def test_query_value_of_an_unknown_family_names_the_modules_to_pick_from(tiny_bert):
    tiny_bert.config.model_type = "my_encoder"
    with pytest.raises(ValueError, match=r"target_modules='query\+value' is invalid: no query/value names known for "
                                         r"model_type 'my_encoder'; .* end in: query, key, value, dense, classifier$"):
        apply_lora(tiny_bert, LoraConfig())
    assert not lora_layers(tiny_bert)


def test_regex_and_suffix_targets(tiny_bert, tiny_llama):
    assert apply_lora(tiny_bert, LoraConfig(target_modules=r".*layer\.1\.attention\.self\.(query|key)")) == [
        "bert.encoder.layer.1.attention.self.key", "bert.encoder.layer.1.attention.self.query"]
    assert apply_lora(tiny_llama, LoraConfig(target_modules=["q_proj", "mlp.down_proj"])) == [
        "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]


def test_rank_and_alpha_patterns(tiny_bert):
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, alpha_pattern={"value": 48},
                                     rank_pattern={"layer.0.attention.self.query": 2, r".*layer\.1\..*value": 6}))
    got = {n: (m.r, m.scaling, tuple(m.lora_A.weight.shape)) for n, m in lora_layers(tiny_bert).items()}
    assert got == {
        "bert.encoder.layer.0.attention.self.query": (2, 4.0, (2, 32)),  # alpha 8 / r 2
        "bert.encoder.layer.0.attention.self.value": (4, 12.0, (4, 32)),  # alpha 48 / r 4
        "bert.encoder.layer.1.attention.self.query": (4, 2.0, (4, 32)),
        "bert.encoder.layer.1.attention.self.value": (6, 8.0, (6, 32)),  # alpha 48 / r 6
    }
    assert tiny_bert.lora_config.rank_alpha("bert.encoder.layer.1.attention.self.value") == (6, 48)


def test_config_is_stored_on_model(tiny_bert):
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, target_modules=["query"], modules_to_save="classifier"))
    assert tiny_bert.lora_config == LoraConfig(r=4, alpha=8, target_modules=("query",),
                                               modules_to_save=("classifier",))


def test_only_adapters_and_modules_to_save_change_after_a_step(tiny_bert):
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, modules_to_save=["classifier"]))
    before = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    opt = torch.optim.AdamW(tiny_bert.parameters(), lr=1e-2, weight_decay=0.0)
    tiny_bert.train()
    for _ in range(2):  # step 1 moves B (A's grad is 0 while B = 0); step 2 moves A
        loss = tiny_bert(ids(4), labels=torch.tensor([0, 1, 1, 0])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in tiny_bert.named_parameters() if not torch.equal(p, before[n])}
    expected = {f"{m}.lora_{ab}.weight" for m in BERT_QV for ab in "AB"} | {"classifier.weight", "classifier.bias"}
    assert changed == expected
    frozen = [n for n, p in tiny_bert.named_parameters() if n not in expected]
    assert all(not tiny_bert.get_parameter(n).requires_grad for n in frozen)


def test_merge_equals_unmerged_and_unmerge_restores(tiny_bert):
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8))
    randomize_adapters(tiny_bert)
    x = ids()
    y = tiny_bert(x).logits
    q = tiny_bert.bert.encoder.layer[0].attention.self.query
    W0 = q.base.weight.detach().clone()
    merge_lora(tiny_bert)
    assert q.merged and not torch.allclose(q.base.weight, W0, atol=1e-3)
    torch.testing.assert_close(q.base.weight, W0 + q.scaling * q.lora_B.weight @ q.lora_A.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny_bert(x).logits, y, atol=1e-5, rtol=0)
    unmerge_lora(tiny_bert)
    assert not q.merged
    torch.testing.assert_close(q.base.weight, W0, atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny_bert(x).logits, y, atol=1e-5, rtol=0)


def test_unload_gives_plain_model_with_equal_outputs(tiny_bert, tmp_path):
    reference_keys = set(tiny_bert.state_dict())
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, modules_to_save=["classifier"]))
    randomize_adapters(tiny_bert)
    x = ids()
    y = tiny_bert(x).logits
    plain = unload_lora(tiny_bert)
    assert not lora_layers(plain) and not hasattr(plain, "lora_config")
    assert set(plain.state_dict()) == reference_keys  # no lora_A / lora_B / .base. keys
    torch.testing.assert_close(plain(x).logits, y, atol=1e-5, rtol=0)
    plain.save_pretrained(tmp_path)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(x).logits, y, atol=1e-5, rtol=0)


def test_apply_lora_errors_name_the_bad_value(tiny_bert):
    # The distinct name suffixes of the Linear modules, not every full path (211 on SmolLM2).
    with pytest.raises(ValueError, match=r"\['q_proj'\] matches none .*; their names end in: query, key, value, "
                                         r"dense, classifier$"):
        apply_lora(tiny_bert, LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="modules_to_save entry 'head'.*classifier"):
        apply_lora(tiny_bert, LoraConfig(modules_to_save=["head"]))
    with pytest.raises(ValueError, match="rank_pattern key 'key' matches no adapted module"):
        apply_lora(tiny_bert, LoraConfig(rank_pattern={"key": 2}))
    assert not lora_layers(tiny_bert)  # failed calls left the model untouched
    apply_lora(tiny_bert, LoraConfig())
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(tiny_bert, LoraConfig())


def test_apply_lora_takes_one_lora_config(tiny_bert):
    """Settings are checked once, when the LoraConfig is built; apply_lora takes nothing else."""
    with pytest.raises(TypeError, match=r"cfg=\{'r': 4\}: apply_lora takes a LoraConfig"):
        apply_lora(tiny_bert, {"r": 4})
    with pytest.raises(TypeError):
        apply_lora(tiny_bert, r=4)
    assert not lora_layers(tiny_bert)


def test_linear_module_names_lists_linear_and_conv1d(tiny_gpt2):
    names = linear_module_names(tiny_gpt2)
    assert names[:4] == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                         "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert names[-1] == "lm_head" and len(names) == 9
