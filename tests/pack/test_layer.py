"""The packed model's pieces on the tiny BERT: shared base, row routing, padding."""

import pytest
import torch

from harness.lora import LoraConfig, apply_lora
from harness.pack import PackedModel, concat_batches, share_frozen
from harness.tiny import tiny_bert


def lora_model(seed, **kw):
    torch.manual_seed(0)
    model = tiny_bert()
    torch.manual_seed(seed)
    apply_lora(model, LoraConfig(modules_to_save=("classifier",), **kw))
    with torch.no_grad():  # B = 0 at init: give each adapter a visible effect
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    return model.eval()


def batch(seed, rows, width):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[0, width // 2:] = 0  # one padded row of its own
    return {"input_ids": torch.randint(1, 99, (rows, width), generator=g), "attention_mask": mask,
            "labels": torch.zeros(rows, dtype=torch.long)}


def test_pack_rows_equal_each_model_alone_with_padding_to_the_longest():
    models = [lora_model(1, r=4, target_modules=("query", "value")),
              lora_model(2, r=2, alpha=8, target_modules=("key", "dense")),
              lora_model(3, r=8, rslora=True, target_modules=("value",))]
    for m in models[1:]:
        assert share_frozen(models[0], m) > 0
    # the frozen base is held once: an embedding and an adapted layer's weight are one tensor
    assert models[2].bert.embeddings.word_embeddings.weight is models[0].bert.embeddings.word_embeddings.weight
    assert models[1].bert.encoder.layer[0].attention.self.query.weight is \
        models[0].bert.encoder.layer[0].attention.self.query.base.weight
    packed = PackedModel(models, ["classifier"]).eval()
    parts = [batch(0, 3, 5), batch(1, 2, 9), batch(2, 4, 7)]
    joined = concat_batches(parts, pad_token_id=0)
    assert joined["input_ids"].shape == (9, 9) and int(joined["attention_mask"].sum()) == sum(
        int(p["attention_mask"].sum()) for p in parts)
    packed.set_rows([(0, 3), (1, 2), (2, 4)])
    joined.pop("labels")
    with torch.no_grad():
        out = packed(**joined).logits
        alone = [m(**{k: v for k, v in p.items() if k != "labels"}).logits for m, p in zip(models, parts)]
    assert torch.allclose(out, torch.cat(alone), atol=1e-5)
    assert (out[:3] - alone[1][:1]).abs().max() > 1e-3  # the routing matters: other adapters differ


def test_share_frozen_refuses_a_different_base():
    a, b = lora_model(1), lora_model(2)
    with torch.no_grad():
        b.bert.embeddings.word_embeddings.weight.add_(1.0)
    with pytest.raises(ValueError, match="frozen weights differ"):
        share_frozen(a, b)
