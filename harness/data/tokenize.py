"""Tokenization: raw splits -> model inputs and labels, cached on disk so a sweep tokenizes once.

Classification / regression rows become the tokenizer's MODEL_INPUTS plus `labels`; causal-LM rows
become prompt + response ids with the prompt labelled IGNORE_INDEX, so the loss is on the response.
Every row also gets `length` (tokens, for length-grouped batches) and `truncated`.

Tokenized splits are cached (datasets' Arrow files) under
`~/.cache/lora-harness/<task>/<tokenizer fingerprint>/<split>-<key>.arrow` (root: `cache_dir` or
$LORA_HARNESS_CACHE), the key covering the raw split's fingerprint, columns, labels and max_length,
so later jobs of a sweep memory-map the first job's tokens instead of tokenizing again.
"""

from __future__ import annotations

import json

from datasets import Dataset

from harness.data.config import TaskConfig
from harness.data.prompts import end_token_id, leading_bos, prompt_text, response_text
from harness.data.sources import md5
from harness.paths import cache_root

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a batch passes to the model
IGNORE_INDEX = -100  # label of prompt and padding tokens: F.cross_entropy skips it
# Bump when the tokenized layout changes so stale cache files are not reused.
_CACHE_VERSION = 1


def tokenizer_fingerprint(tokenizer) -> str:
    """md5 of everything in a tokenizer that changes its output: vocab/rules, special tokens, template.

    The fast backend's `truncation` / `padding` entries are left out: they are per-call state that
    the last call with truncation=True leaves behind, not properties of the tokenizer.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        vocab = json.dumps({k: v for k, v in state.items() if k not in ("truncation", "padding")}, sort_keys=True)
    else:
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    state = [type(tokenizer).__name__, vocab, tokenizer.chat_template, str(tokenizer.special_tokens_map),
             tokenizer.padding_side, tokenizer.truncation_side]
    return md5(json.dumps(state, default=str))[:16]


def _encode_causal(batch, tokenizer, prompt_column, response_column, max_length):
    """input_ids = prompt + response (+ end token); labels = IGNORE_INDEX on the prompt, so loss is on the response.

    Prompt and response are tokenized separately (not as one string) so the boundary is the same
    token boundary generation sees. Over max_length, the response keeps at least half the budget
    and the prompt loses tokens from its start (the end, next to the response, matters most).
    """
    prompts, responses = batch[prompt_column], batch[response_column]
    prompt_ids = tokenizer([prompt_text(tokenizer, p) for p in prompts], add_special_tokens=False,
                           verbose=False)["input_ids"]
    response_ids = tokenizer([response_text(tokenizer, p, r) for p, r in zip(prompts, responses)],
                             add_special_tokens=False, verbose=False)["input_ids"]
    end, bos = end_token_id(tokenizer), leading_bos(tokenizer)
    out = {"input_ids": [], "attention_mask": [], "labels": [], "length": [], "truncated": []}
    for p, r in zip(prompt_ids, response_ids):
        p = bos + p
        r = r if end in r else r + [end]
        truncated = len(p) + len(r) > max_length
        if truncated:
            keep_r = min(len(r), max(max_length - len(p), max_length // 2))
            p, r = p[len(p) - (max_length - keep_r):], r[:keep_r]
        ids = p + r
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append([IGNORE_INDEX] * len(p) + r)
        out["length"].append(len(ids))
        out["truncated"].append(truncated)
    return out


def _encode_pairs(batch, tokenizer, text_columns, label_column, label_map, max_length):
    """Tokenize single texts or pairs; rows over max_length are re-tokenized with truncation.

    Tokenizing without truncation first is what lets the build report how many rows were cut.
    """
    texts = [batch[c] for c in text_columns]
    enc = tokenizer(*texts, truncation=False, verbose=False)
    keys = [k for k in MODEL_INPUTS if k in enc]
    out = {k: list(enc[k]) for k in keys}
    long = [i for i, ids in enumerate(out["input_ids"]) if len(ids) > max_length]
    if long:
        cut = tokenizer(*[[t[i] for i in long] for t in texts], truncation=True, max_length=max_length)
        for j, i in enumerate(long):
            for k in keys:
                out[k][i] = cut[k][j]
    labels = batch[label_column]
    out["labels"] = [label_map[v] for v in labels] if label_map is not None else [float(v) for v in labels]
    out["length"] = [len(ids) for ids in out["input_ids"]]
    long_set = set(long)
    out["truncated"] = [i in long_set for i in range(len(labels))]
    return out


def tokenize_split(cfg: TaskConfig, split: str, raw: Dataset, tokenizer, tokenizer_fp: str, max_length: int,
                   label_map) -> Dataset:
    """One raw split tokenized, read from the cache when the same split was tokenized the same way before."""
    folder = cache_root(cfg.cache_dir) / cfg.name / tokenizer_fp
    folder.mkdir(parents=True, exist_ok=True)
    columns = ([cfg.prompt_column, cfg.response_column] if cfg.kind == "causal_lm"
               else [*cfg.text_columns, cfg.label_column])
    key = md5(json.dumps([_CACHE_VERSION, raw._fingerprint, cfg.kind, columns, max_length,
                          sorted((repr(k), v) for k, v in (label_map or {}).items())]))[:16]
    if cfg.kind == "causal_lm":
        fn, kwargs = _encode_causal, dict(tokenizer=tokenizer, prompt_column=cfg.prompt_column,
                                          response_column=cfg.response_column, max_length=max_length)
    else:
        fn, kwargs = _encode_pairs, dict(tokenizer=tokenizer, text_columns=list(cfg.text_columns),
                                         label_column=cfg.label_column, label_map=label_map,
                                         max_length=max_length)
    return raw.map(fn, fn_kwargs=kwargs, batched=True, remove_columns=raw.column_names,
                   cache_file_name=str(folder / f"{split}-{key}.arrow"), load_from_cache_file=True,
                   new_fingerprint=key, desc=f"tokenize {cfg.name}/{split}")
