"""Parameter counts and training-state bytes, in closed form for the tiny models."""

import pytest

from harness.lora import LoraConfig, apply_lora, count_parameters, lora_layers, trainable_state_bytes


def test_counts_closed_form_bert(tiny_bert):
    # embeddings 99*32 + 64*32 + 2*32 + LN 64 = 5344; per layer 4*(32*32+32) + 64 + (32*37+37) + (37*32+32) + 64
    # = 6789; pooler 32*32+32 = 1056; classifier 32*2+2 = 66  ->  5344 + 2*6789 + 1056 + 66 = 20044
    full = count_parameters(tiny_bert)
    assert full == {"trainable": 20044, "total": 20044, "trainable_pct": 100.0, "adapter": 0, "head": 20044}
    apply_lora(tiny_bert, LoraConfig(r=4, alpha=8, modules_to_save=["classifier"]))
    c = count_parameters(tiny_bert)
    adapter = 4 * 4 * (32 + 32)  # 4 layers x r (in + out) = 1024
    head = 32 * 2 + 2  # classifier weight + bias
    assert c == {"trainable": adapter + head, "total": 20044 + adapter,
                 "trainable_pct": pytest.approx(100 * 1090 / 21068), "adapter": adapter, "head": head}
    b = trainable_state_bytes(tiny_bert)
    assert b == {"param_bytes": 4 * 21068, "grad_bytes": 4 * 1090, "optimizer_bytes": 8 * 1090,
                 "state_bytes": 4 * 21068 + 12 * 1090}
    assert trainable_state_bytes(tiny_bert, optimizer_slots=0)["optimizer_bytes"] == 0


def test_counts_closed_form_llama_all_linear(tiny_llama):
    total0 = count_parameters(tiny_llama)["total"]
    apply_lora(tiny_llama, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    # per layer (in, out): q 32->32, k 32->16, v 32->16, o 32->32, gate 32->37, up 32->37, down 37->32
    per_layer = sum(4 * (i + o) for i, o in [(32, 32), (32, 16), (32, 16), (32, 32), (32, 37), (32, 37), (37, 32)])
    assert per_layer == 1724
    c = count_parameters(tiny_llama)
    assert (c["adapter"], c["trainable"], c["head"], c["total"]) == (2 * 1724, 2 * 1724, 0, total0 + 2 * 1724)
    assert sum(m.r * (m.in_features + m.out_features) for m in lora_layers(tiny_llama).values()) == 2 * 1724


def test_optimizer_slots_must_be_a_non_negative_integer(tiny_bert):
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"optimizer_slots={bad!r}: must be a non-negative integer"):
            trainable_state_bytes(tiny_bert, optimizer_slots=bad)
