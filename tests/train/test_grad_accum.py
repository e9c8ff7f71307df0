"""Gradient accumulation against one big batch: the summed loss over the accumulated micro-batches'
items is the model's own loss, so grad_accum=2 gives the gradient of one batch of both, also
through the CLI with a short last micro-batch."""

import math

import pytest
import torch

from harness.data import Collator
from harness.scoring import loss_items, summed_loss
from harness.tiny import tiny_bert, tiny_llama
from harness.train import accumulate_gradients
from tests.helpers import metrics_rows, read_record, run_cli

NO_DROPOUT = "model.dropout=0.0"  # every dropout of the checkpoint off (also minilm's default)


def _no_dropout_bert(num_labels=2):
    return tiny_bert(num_labels=num_labels, attn_implementation="eager", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _accumulated(model, micro, kind):
    model.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, micro, kind, torch.device("cpu"))
    return loss, _grads(model)


def _examples_classification():
    # four examples of different lengths; micro-batches of 3 and 1 (a short last batch)
    ids = [[5, 6, 7, 8, 9], [5, 6], [7, 8, 9], [9, 8, 7, 6, 5, 4]]
    return [{"input_ids": x, "attention_mask": [1] * len(x), "labels": i % 2} for i, x in enumerate(ids)]


def _examples_causal():
    # prompt tokens labelled -100; 4, 1, 3 and 2 response tokens
    rows = [([5, 6], [7, 8, 9, 10]), ([5, 6, 7], [8]), ([9], [10, 11, 12]), ([4, 5, 6, 7], [8, 9])]
    out = []
    for prompt, response in rows:
        ids = prompt + response
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + response})
    return out


@pytest.mark.parametrize("kind, build, examples, split", [
    ("classification", _no_dropout_bert, _examples_classification, 3),
    ("causal_lm", tiny_llama, _examples_causal, 1),  # Llama has no dropout by default
])
def test_grad_accum_2_equals_one_batch_of_both(kind, build, examples, split):
    model = build().train()
    collate = Collator(pad_token_id=0, kind=kind)
    ex = examples()
    one_loss, one = _accumulated(model, [collate(ex)], kind)
    two_loss, two = _accumulated(model, [collate(ex[:split]), collate(ex[split:])], kind)
    assert float(two_loss) == pytest.approx(float(one_loss), rel=1e-6)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-7, msg=name)
    # the old mean of per-micro-batch means: a different gradient, so the comparison above can fail
    model.zero_grad(set_to_none=True)
    for b in (collate(ex[:split]), collate(ex[split:])):
        (model(**b).loss / 2).backward()
    old = _grads(model)
    assert not all(torch.allclose(old[n], one[n], rtol=1e-3, atol=1e-6) for n in one)


@pytest.mark.parametrize("kind", ["classification", "regression", "causal_lm"])
def test_summed_loss_over_its_items_is_the_model_own_loss(kind):
    if kind == "causal_lm":
        model, ex = tiny_llama(), _examples_causal()
    else:
        model = _no_dropout_bert(num_labels=1 if kind == "regression" else 2)
        ex = _examples_classification()
        if kind == "regression":
            ex = [{**e, "labels": 0.5 + e["labels"]} for e in ex]
    batch = Collator(pad_token_id=0, kind=kind)(ex)
    with torch.no_grad():
        out = model(**batch)
    ours = summed_loss(kind, out.logits, batch["labels"]) / loss_items(kind, batch["labels"])
    assert loss_items(kind, batch["labels"]) == (10 if kind == "causal_lm" else 4)
    assert float(ours) == pytest.approx(float(out.loss), rel=1e-6)


@pytest.mark.slow
def test_cli_grad_accum_with_a_short_last_micro_batch_equals_one_batch(tiny_model_dir, tmp_path):
    # 94 examples: batch 8 ends with a batch of 6; batch 4 x 2 ends with micro-batches of 4 and 2,
    # which the old mean of means weighed 1:1 instead of 4:2
    runs = {}
    for name, overrides in (("accum", ("trainer.batch_size=4", "trainer.grad_accum=2")), ("one", ())):
        # random batches: length grouping forms micro-batches, so 4 x 2 would group other examples than 8
        proc = run_cli(tiny_model_dir, tmp_path / name, "task.limit_train=94", NO_DROPOUT, "trainer.log_every=1",
                       "task.group_by_length=false",
                       "trainer.save_model=false", *overrides)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = ([r["train/loss"] for r in metrics_rows(tmp_path / name) if "train/loss" in r],
                      read_record(tmp_path / name))
    (accum_losses, accum), (one_losses, one) = runs["accum"], runs["one"]
    assert len(accum_losses) == len(one_losses) == 12
    assert accum_losses == pytest.approx(one_losses, rel=1e-4)
    assert accum["metrics"]["final"]["loss"] == pytest.approx(one["metrics"]["final"]["loss"], rel=1e-4)
    assert math.isfinite(accum["metrics"]["final"]["loss"])
    assert accum["metrics"]["final"]["accuracy"] == one["metrics"]["final"]["accuracy"]
