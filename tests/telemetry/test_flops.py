"""Model FLOPs against a hand count and torch's FlopCounterMode, and the MFU definition."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertForSequenceClassification

from harness.lora import LoraConfig, apply_lora
from harness.telemetry import StepTimer, model_flops, peak_bf16_flops
from harness.tiny import tiny_bert, tiny_gpt2


def _tiny_bert():
    return tiny_bert(attn_implementation="eager")  # eager: the attention matmuls FlopCounterMode sees


def _tiny_gpt2():
    return tiny_gpt2(attn_implementation="eager")


def test_model_flops_match_a_hand_count():
    # tiny BERT, per layer: q, k, v, o 4 x 32x32 = 4,096 + FFN 2 x 32x37 = 2,368 -> 6,464; x 2 layers = 12,928
    # weights on every token; pooler 32x32 + classifier 32x2 = 1,088 on one row per sequence.
    # Full FT: 6 FLOPs per weight (forward, input gradient, weight gradient). Attention:
    # 12 * layers 2 * heads 4 * head_dim 8 = 768 per L^2.
    full = model_flops(_tiny_bert())
    assert (full.per_token, full.per_sequence, full.attention) == (6 * 12_928, 6 * 1_088, 768)
    assert (full.matmul_params, full.trainable_matmul_params) == (14_016, 14_016)
    # LoRA q+v r=8 + pooler/classifier: adapters 2 layers x 2 x 8 x (32 + 32) = 2,048 weights, trainable;
    # the 12,928 base weights frozen (4 FLOPs each: no weight gradient); the heads train (6 each).
    lora = _tiny_bert()
    apply_lora(lora, LoraConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier", "pooler"]))
    f = model_flops(lora)
    assert (f.per_token, f.per_sequence, f.attention) == (4 * (12_928 + 2_048) + 2 * 2_048, 6 * 1_088, 768)
    assert (f.matmul_params, f.trainable_matmul_params) == (16_064, 3_136)
    # a batch counts its real tokens only: lengths 4 and 2 (the second padded to 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert f.of_batch(mask) == 64_000 * 6 + 6_528 * 2 + 768 * (16 + 4)
    # GPT-2 (Conv1D, tied LM head): per layer c_attn 32x96 + attn c_proj 32x32 + c_fc 32x128 + mlp c_proj
    # 128x32 = 12,288; x 2 + lm_head 32x99 = 27,744 weights, all on every token
    gpt2 = model_flops(_tiny_gpt2())
    assert (gpt2.per_token, gpt2.per_sequence, gpt2.attention) == (6 * 27_744, 0, 768)


@pytest.mark.parametrize("build", [_tiny_bert, _tiny_gpt2], ids=["bert", "gpt2"])
def test_full_finetuning_flops_equal_what_torch_counts_in_a_training_step(build):
    # Full fine-tuning computes every input and weight gradient, so the model count must equal the
    # matmul FLOPs torch's FlopCounterMode sees in one forward + backward (no padding).
    model = build()
    ids = torch.randint(0, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    labels = torch.tensor([0, 1]) if isinstance(model, BertForSequenceClassification) else ids
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert model_flops(model).of_batch(mask) == counter.get_total_flops()


def test_peak_flops_table_and_mfu_definition():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert (peak_bf16_flops("NVIDIA L4"), peak_bf16_flops("NVIDIA L40"), peak_bf16_flops("NVIDIA L40S")) == (
        121e12, 181e12, 362e12)
    assert peak_bf16_flops("cpu") is None and peak_bf16_flops(None) is None
    timer = StepTimer(warmup=1, device=torch.device("cpu"))
    for tokens in (10, 20, 30):
        timer.start()
        timer.data_ready()
        timer.stop(tokens, 40, 2, flops=1000.0 * tokens)
    s = timer.summary(peak_flops=1e6)
    assert s["steps_timed"] == 2 and s["flops_per_token"] == 1000.0
    assert s["mfu"] == pytest.approx(s["flops_per_token"] * s["tokens_per_s"] / 1e6, rel=1e-12)
    assert timer.summary()["mfu"] is None  # no known peak (a CPU): no MFU
