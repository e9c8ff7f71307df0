"""Run names that read like a table row: "lora-r8-a16-qv-seed0", "full-seed0" (the W&B run name)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Attention projections by the names BERT (query/key/value/dense) and Llama-style models use.
_MODULE_LETTER = {
    "q": "q", "query": "q", "q_proj": "q",
    "k": "k", "key": "k", "k_proj": "k",
    "v": "v", "value": "v", "v_proj": "v",
    "o": "o", "dense": "o", "o_proj": "o", "out_proj": "o",
}


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read a field from a dict, DictConfig, dataclass or namespace alike."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _num(x: Any) -> str:
    """16 -> "16", 16.0 -> "16", 0.5 -> "0.5", 5e-4 -> "0.0005"."""
    x = float(x)
    return str(int(x)) if x.is_integer() else format(x, "g")


def _targets_abbrev(target_modules: Any) -> str:
    """["query", "value"] -> "qv"; "all-linear" -> "all"; "query+value" (each family's q and v,
    harness.lora.QUERY_VALUE) -> "qv"; unknown names are appended with "+"."""
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return "all"
        if target_modules == "query+value":
            return "qv"
        target_modules = [target_modules]
    letters, others = set(), []
    for name in target_modules:
        leaf = str(name).rsplit(".", 1)[-1]
        if leaf in _MODULE_LETTER:
            letters.add(_MODULE_LETTER[leaf])
        else:
            others.append(str(name))
    if not letters and not others:
        raise ValueError(f"method.target_modules must name at least one module, got {target_modules!r}")
    attention = "".join(c for c in "qkvo" if c in letters)  # canonical order: [value, query] -> "qv"
    return "+".join(([attention] if attention else []) + others)


def _variant_tags(method_cfg: Any) -> list[str]:
    """What makes a LoRA-family run differ from plain LoRA at the same r / alpha / targets, so runs of
    one family study get one name each: ["dora"], ["olora", "fa"], ["lrr16"] (LoRA+), [] for LoRA."""
    init = _cfg_get(method_cfg, "init", "kaiming")
    ratio = _cfg_get(method_cfg, "lr_ratio")
    tags = ["dora"] if _cfg_get(method_cfg, "use_dora") else []
    tags += [init] if init not in (None, "kaiming") else []
    tags += ["fa"] if _cfg_get(method_cfg, "freeze_a") else []
    return tags + ([f"lrr{_num(ratio)}"] if ratio not in (None, 1) else [])


def run_name(method_cfg: Any, seed: int, include_lr: bool = False) -> str:
    """A name that reads like a table row: "lora-r8-a16-qv-seed0", "full-seed0".

    `include_lr` appends e.g. "-lr0.0005" for learning-rate sweeps, where the rest is constant.
    """
    method = _cfg_get(method_cfg, "name")
    if method == "lora":
        r, alpha = _cfg_get(method_cfg, "r"), _cfg_get(method_cfg, "alpha")
        if r is None or alpha is None:
            raise ValueError(f"a lora method config needs r and alpha, got r={r!r}, alpha={alpha!r}")
        parts = ["lora", f"r{_num(r)}", f"a{_num(alpha)}",
                 _targets_abbrev(_cfg_get(method_cfg, "target_modules", "all-linear")), *_variant_tags(method_cfg)]
    elif method == "full":
        parts = ["full"]
    else:
        raise ValueError(f"method.name must be one of ('lora', 'full'), got {method!r}")
    if include_lr:
        parts.append(f"lr{_num(_cfg_get(method_cfg, 'lr'))}")
    return "-".join(parts + [f"seed{seed}"])
