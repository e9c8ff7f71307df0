"""Scoring: evaluation loss plus the task's metrics, and greedy generations for causal LMs.

Metrics are `evaluate` modules kept in harness/metrics/ and loaded by path (`harness.metrics`):
`evaluate.load` on a local file works offline, the hub names ("accuracy", "glue") do not. The loss
is computed here from the logits, not taken from the model, so LoRA-wrapped and plain models are
scored by the same code:
- classification: mean cross-entropy per example; predictions = argmax of the logits.
- regression: mean squared error per example (what HF's regression head trains on); predictions =
  the single logit.
- causal_lm: mean cross-entropy per response token (labels IGNORE_INDEX elsewhere), next-token
  shifted; perplexity = exp(loss).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from harness.data import IGNORE_INDEX, MODEL_INPUTS, TaskData, encode_prompt, end_token_id, pad_token_id
from harness.metrics import load_metric


def _logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if hasattr(out, "logits") else out[0]


def summed_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss summed over its items (float32): examples for classification / regression, response
    tokens for causal_lm (token t predicts token t+1; labels IGNORE_INDEX count nothing).

    Summed, not averaged, so that training can divide by the item count of a whole optimizer step
    (gradient accumulation then weighs every item alike, however the micro-batches split them).
    Divided by `loss_items` it is the model's own loss. (evaluate_model computes the same losses
    per example instead, to put them back in stored order: the two definitions must stay equal.)
    """
    logits = logits.float()
    if kind == "causal_lm":
        # Shift the labels, not the logits: a (B, T-1, V) slice of the logits would be copied.
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    if kind == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(torch.float32), reduction="sum")
    return F.cross_entropy(logits, labels, reduction="sum")


def loss_items(kind: str, labels: torch.Tensor) -> int:
    """How many items `summed_loss` adds up for these labels."""
    if kind == "causal_lm":
        return int((labels[:, 1:] != IGNORE_INDEX).sum())
    return len(labels)


# Float32 logits one causal-LM scoring forward may hold: 2**27 (512 MiB). A language model's logits
# are rows x length x vocabulary: at eval_batch_size 128, length 128 and SmolLM2's 49,152 tokens
# they are 3.2 GB, plus as much again for the log-softmax, which OOM-killed SmolLM2 jobs on a 24 GiB
# machine. Each evaluation batch is scored in row slices under this bound; a row's losses do not
# depend on which rows share its forward, so the metrics do not depend on the bound.
LOGITS_BUDGET = 2**27


def _rows_per_forward(model, length: int, budget: int) -> int | None:
    """How many rows of `length` tokens one forward may score within `budget` logits (at least
    one); None when the model does not say its vocabulary size (then the batch is not sliced)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return max(1, budget // (length * vocab)) if vocab else None


def _token_losses(model, indices: list[int], batch: dict[str, torch.Tensor], autocast) -> dict[int, list[float]]:
    """Each row's per-response-token losses (token t predicts token t+1), keyed by its stored index;
    scored in row slices of at most LOGITS_BUDGET logits."""
    rows = _rows_per_forward(model, batch["input_ids"].shape[1], LOGITS_BUDGET) or len(indices)
    losses = {}
    for start in range(0, len(indices), rows):
        part = {k: v[start:start + rows] for k, v in batch.items()}
        with autocast():
            logits = _logits(model, part)
        targets = part["labels"][:, 1:]
        token_losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                       ignore_index=IGNORE_INDEX, reduction="none")
        for index, row, mask in zip(indices[start:start + rows], token_losses.tolist(),
                                    (targets != IGNORE_INDEX).tolist()):
            losses[index] = [v for v, keep in zip(row, mask) if keep]
        del logits, token_losses
    return losses


def evaluate_model(model, task: TaskData, batch_size: int, device, autocast=contextlib.nullcontext,
                   split: str = "eval", max_batches: int | None = None) -> dict[str, float]:
    """Score `model` on one split: {"loss": .., <metric>: ..} (causal_lm: {"loss", "perplexity"}).

    Runs in eval mode under no_grad and puts the model back in the mode it was in. `autocast` is a
    zero-argument callable returning a context manager (e.g. a bf16 torch.autocast partial); the
    loss is computed in float32 either way. `max_batches` scores only the first batches (quick checks).
    """
    was_training = model.training
    model.eval()
    batches = task.eval_batches(batch_size, split)[:max_batches]
    # Per-example results keyed by the example's stored index: batches come length-sorted (a speed
    # change only), so nothing below may depend on which examples shared a batch.
    losses: dict[int, list[float]] = {}  # one value per example; causal_lm: one per response token
    predictions, references = {}, {}
    try:
        with torch.no_grad():
            for indices, batch in zip(batches, task.eval_loader(batch_size, split)):
                batch = {k: v.to(device) for k, v in batch.items()}
                if task.kind == "causal_lm":
                    losses.update(_token_losses(model, indices, batch, autocast))
                    continue
                with autocast():
                    logits = _logits(model, batch)
                logits, labels = logits.float(), batch["labels"]
                if task.kind == "regression":
                    preds = logits.squeeze(-1)
                    example_losses = F.mse_loss(preds, labels, reduction="none")
                else:
                    preds = logits.argmax(-1)
                    example_losses = F.cross_entropy(logits, labels, reduction="none")
                for index, loss, pred, ref in zip(indices, example_losses.tolist(), preds.tolist(), labels.tolist()):
                    losses[index], predictions[index], references[index] = [loss], pred, ref
    finally:
        model.train(was_training)
    order = sorted(losses)  # stored order
    count = sum(len(losses[i]) for i in order)  # examples, or response tokens for causal_lm
    if count == 0:
        raise ValueError(f"task {task.name}: nothing to score in split {split!r} "
                         f"(no examples, or no response tokens)")
    # fsum is exactly rounded: the loss cannot depend on summation order.
    loss_sum = math.fsum(v for i in order for v in losses[i])
    predictions = [predictions[i] for i in order if i in predictions]
    references = [references[i] for i in order if i in references]
    results = {"loss": loss_sum / count}
    if task.kind == "causal_lm":
        results["perplexity"] = math.exp(results["loss"]) if results["loss"] < 700 else math.inf
    for name in task.metrics:
        scores = load_metric(name).compute(predictions=predictions, references=references,
                                           **task.metric_kwargs.get(name, {}))
        results.update({k: float(v) for k, v in scores.items()})
    return results


def generate_samples(model, tokenizer, task: TaskData, n: int = 4, max_new_tokens: int = 32,
                     split: str = "eval") -> list[dict]:
    """Greedy generations for the first n prompts of a split: [{prompt, reference, generation}].

    One prompt at a time, so no padding side matters; the prompt is encoded exactly as in training
    (chat template and generation prompt when the tokenizer has one).
    """
    if task.kind != "causal_lm":
        raise ValueError(f"task {task.name} is {task.kind}; generations need a causal_lm task")
    rows = task.raw[split].select(range(min(n, len(task.raw[split]))))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    samples = []
    try:
        with torch.no_grad():
            for row in rows:
                prompt, reference = row[task.config.prompt_column], row[task.config.response_column]
                ids = encode_prompt(tokenizer, prompt)[-task.max_length:]
                input_ids = torch.tensor([ids], device=device)
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad_token_id(tokenizer), eos_token_id=end_token_id(tokenizer))
                generation = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()
                samples.append({"prompt": prompt, "reference": reference, "generation": generation})
    finally:
        model.train(was_training)
    return samples
