"""AdapterBank: several adapters on one base, switched in place."""

import pytest
import torch

from harness.lora import AdapterBank, merge_lora, save_adapter
from tests.lora.helpers import adapted_bert, ids


def test_switching_adapters_gives_each_adapters_outputs(tiny_bert, tmp_path):
    a = adapted_bert(tiny_bert, seed=3)
    b = adapted_bert(tiny_bert, seed=4, alpha=32)  # same shapes, different scaling
    save_adapter(a, tmp_path / "a")
    save_adapter(b, tmp_path / "b")
    x = ids()
    ya, yb = a(x).logits, b(x).logits
    assert not torch.allclose(ya, yb, atol=1e-3)

    bank = AdapterBank(tiny_bert)
    bank.add("a", tmp_path / "a")
    bank.add("b", tmp_path / "b")
    assert (bank.names, bank.active) == (["a", "b"], None)
    weight_id = id(tiny_bert.bert.encoder.layer[0].attention.self.query.base.weight)
    for name, expected in [("a", ya), ("b", yb), ("a", ya)]:
        bank.activate(name)
        assert bank.active == name
        assert torch.equal(tiny_bert(x).logits, expected)
    assert id(tiny_bert.bert.encoder.layer[0].attention.self.query.base.weight) == weight_id  # no reload

    merge_lora(tiny_bert)  # switching while merged swaps the merged delta too
    bank.activate("b")
    torch.testing.assert_close(tiny_bert(x).logits, yb, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match=r"unknown adapter 'c'; loaded: \['a', 'b'\]"):
        bank.activate("c")
    with pytest.raises(ValueError, match="adapter name 'a' already loaded"):
        bank.add("a", tmp_path / "a")


def test_bank_rejects_adapters_that_cannot_share_the_base(tiny_bert, tmp_path):
    save_adapter(adapted_bert(tiny_bert, seed=3), tmp_path / "kaiming")
    save_adapter(adapted_bert(tiny_bert, seed=3, init="pissa"), tmp_path / "pissa", convert_residual=False)
    save_adapter(adapted_bert(tiny_bert, seed=3, init="pissa"), tmp_path / "pissa_converted")  # rank 2r
    save_adapter(adapted_bert(tiny_bert, seed=3, modules_to_save=["classifier", "pooler"]), tmp_path / "pooler")
    bank = AdapterBank(tiny_bert)
    bank.add("kaiming", tmp_path / "kaiming")
    with pytest.raises(ValueError, match="init='pissa'.*cannot share one base"):
        bank.add("pissa", tmp_path / "pissa")
    with pytest.raises(ValueError, match=r"file has shape \(8, 32\), the model expects \(4, 32\)"):
        bank.add("pissa_converted", tmp_path / "pissa_converted")
    with pytest.raises(ValueError, match=r"keys differ.*extra: \['base_model.model.bert.pooler.dense.bias'"):
        bank.add("pooler", tmp_path / "pooler")
    assert bank.names == ["kaiming"]
