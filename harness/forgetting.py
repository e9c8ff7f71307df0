"""The forgetting probe (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"): how much of
the pretrained model's general language a fine-tuning run loses, measured beside what it learned.

A causal-LM task with `task.forget` set is scored on held-out general English text
(harness/data/general_text.py) twice: with the pretrained model **before** the first step (LoRA's
B = 0, so the adapted model is the base model) and with the **final** weights (and with the weights
of the best validation evaluation when `trainer.select_best` keeps them, as the test split is).

Perplexity is token-weighted over the whole text: exp(total NLL / total predicted tokens) over all
chunks, not a mean of per-chunk perplexities (which would weigh a 30-token tail like a full chunk).
The NLL is the same next-token cross-entropy training minimizes (`scoring.summed_loss`), in
float32, summed per batch and added up in float64.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import torch

from harness.data import Collator, ForgetConfig, general_chunks, tokenizer_fingerprint
from harness.schema import check
from harness.scoring import loss_items, summed_loss

log = logging.getLogger("harness")


def probe_perplexity(model, chunks, batch_size: int, device, autocast=contextlib.nullcontext) -> dict:
    """{"nll": mean NLL per predicted token (nats), "perplexity": exp(nll), "tokens": predicted tokens}.

    Eval mode under no_grad; the model is put back in the mode it was in. `chunks` holds
    input_ids / attention_mask / labels rows (padding is masked by attention_mask and labelled
    IGNORE_INDEX by the collator, so it predicts and is predicted by nothing).
    """
    collate = Collator(pad_token_id=0, kind="causal_lm")  # any pad id: masked and unlabelled
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(chunks), batch_size):
                rows = chunks.select(range(start, min(start + batch_size, len(chunks))))
                batch = collate([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows])
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast():
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                total += float(summed_loss("causal_lm", logits, batch["labels"]))
                tokens += loss_items("causal_lm", batch["labels"])
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("task.forget: the probe text has no token to predict")
    nll = total / tokens
    return {"nll": nll, "perplexity": math.exp(nll) if nll < 700 else math.inf, "tokens": tokens}


class ForgetProbe:
    """One run's probe: the chunks, built once, and the record's `metrics.forget` entry.

    `tracker` (a harness.telemetry.Tracker, or None) gets each score as a `forget/nll`,
    `forget/perplexity` row at its step, so W&B charts it beside the evaluations."""

    def __init__(self, cfg: ForgetConfig, tokenizer, device, autocast=contextlib.nullcontext, cache_dir=None,
                 tracker=None):
        self.cfg, self.device, self.autocast, self.tracker = cfg, device, autocast, tracker
        self.chunks = general_chunks(cfg, tokenizer, tokenizer_fingerprint(tokenizer), cache_dir)

    @classmethod
    def for_task(cls, task, tokenizer, model, device, autocast=contextlib.nullcontext,
                 tracker=None) -> ForgetProbe | None:
        """The probe a TaskData's config asks for (`task.forget`), or None when it is null.
        A chunk longer than the model's positions fails here, naming the key, not mid-forward."""
        cfg = task.config.forget if task.config is not None else None
        if cfg is None:
            return None
        config = getattr(model, "config", None)
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        check(positions is None or cfg.max_length <= positions, "task.forget.max_length", cfg.max_length,
              f"the model takes at most {positions} positions")
        return cls(cfg, tokenizer, device, autocast, task.config.cache_dir, tracker)

    def score(self, model, step: int | None = None) -> dict:
        started = time.perf_counter()
        scores = probe_perplexity(model, self.chunks, self.cfg.batch_size, self.device, self.autocast)
        log.info("forget probe%s: perplexity %.4f (nll %.4f) over %d tokens of %d chunks, %.1f s",
                 "" if step is None else f" @ step {step}", scores["perplexity"], scores["nll"], scores["tokens"],
                 len(self.chunks), time.perf_counter() - started)
        if self.tracker is not None and step is not None:
            self.tracker.log({"forget/nll": scores["nll"], "forget/perplexity": scores["perplexity"]}, step=step)
        return scores

    def report(self, model, before: dict | None, best_weights=None, best_step: int | None = None,
               final_step: int | None = None) -> dict:
        """`metrics.forget`: before, final and (with `best_weights`, a context manager that swaps the
        best validation weights in) best, each {nll, perplexity, perplexity_increase}; plus the
        text's size. `before` is None when a resumed run's checkpoint predates the probe."""
        final = self._with_increase(self.score(model, final_step), before)
        best = None
        if best_weights is not None:
            if best_step == final_step:
                best = final  # the same weights: the same numbers
            else:
                with best_weights(model):
                    best = self._with_increase(self.score(model), before)
        return {"before": _plain(before), "final": _plain(final), "best": _plain(best),
                "best_step": best_step if best is not None else None,
                "tokens": final["tokens"], "chunks": len(self.chunks)}

    @staticmethod
    def _with_increase(after: dict, before: dict | None) -> dict:
        increase = after["perplexity"] - before["perplexity"] if before is not None else None
        return {**after, "perplexity_increase": increase}


def _plain(scores: dict | None) -> dict | None:
    """A score without its token count (the entry states it once)."""
    return None if scores is None else {k: v for k, v in scores.items() if k != "tokens"}
