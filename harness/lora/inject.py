"""Injection: choose the layers to adapt, wrap them in place, and take the wrappers out again.

peft's three steps: walk `named_modules`, match the name (exact, `.`-suffix or full regex), `setattr`
a LoraLinear that *holds* the base layer, so pretrained tensors are never copied. `plan_lora` is
the choosing alone, so loading an adapter file can check it against the model before anything
changes; `unload_lora` merges and puts the plain layers back for export.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch.nn as nn

from harness.lora.config import ALL_LINEAR, QUERY_VALUE, QUERY_VALUE_TARGETS, LoraConfig, name_matches
from harness.lora.dora import DoraLinear
from harness.lora.layer import LINEAR_TYPES, LoraLinear
from harness.schema import check

# Output heads that "all-linear" never adapts: they map to labels / the vocabulary, and LoRA papers
# either train them fully (modules_to_save) or leave them alone.
HEAD_NAMES = ("lm_head", "classifier", "score")


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of every nn.Linear / Conv1D in the model (the candidates for LoRA)."""
    return [n for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES) and n]


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """{module name: LoraLinear} in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLinear) for m in model.modules())


def match_modules_to_save(model: nn.Module, modules_to_save) -> list[str]:
    """Names of the modules (any type) that `modules_to_save` entries name by exact name or suffix.
    Nested hits collapse to the outermost module. An entry that matches nothing is a ValueError."""
    names = [n for n, _ in model.named_modules() if n]
    hits = []
    for entry in modules_to_save:
        found = [n for n in names if name_matches(n, entry, regex=False)]
        if not found:
            children = dict.fromkeys(n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit())
            raise ValueError(f"modules_to_save entry {entry!r} matches no module; module names end in: "
                             f"{', '.join(children)}")
        hits += found
    return sorted(n for n in set(hits) if not any(n.startswith(h + ".") for h in hits))


def _output_head_names(model: nn.Module) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {n for n, m in model.named_modules() if head is not None and m is head}


def resolve_target_modules(target_modules, model: nn.Module):
    """"query+value" -> this model family's names (`QUERY_VALUE_TARGETS[model.config.model_type]`);
    anything else is returned as given. A family without an entry is a ConfigError that lists the
    model's Linear/Conv1D name suffixes, so the user can name the targets."""
    if target_modules != QUERY_VALUE:
        return target_modules
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in QUERY_VALUE_TARGETS:
        check(False, "target_modules", QUERY_VALUE, f"no query/value names known for model_type {model_type!r}; "
              f"name them (target_modules=[...]) from the model's Linear/Conv1D modules, whose names end in: "
              f"{', '.join(linear_suffixes(model))}")
    return QUERY_VALUE_TARGETS[model_type]


def linear_suffixes(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's Linear/Conv1D modules, in model order
    (q_proj, k_proj, ..., lm_head): what target_modules can name, without 200 full paths."""
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linear_module_names(model)))


def plan_lora(model: nn.Module, cfg: LoraConfig) -> dict[str, tuple[int, float]]:
    """{module name: (r, alpha)} that `apply_lora` would adapt, without touching the model.

    Modules inside modules_to_save are never adapted (they are trained fully instead).
    """
    if has_lora(model):
        raise ValueError("model already has LoRA layers; unload_lora(model) first or start from a fresh base model")
    linear = linear_module_names(model)
    saved = match_modules_to_save(model, cfg.modules_to_save)

    def inside_saved(n):
        return any(n == s or n.startswith(s + ".") for s in saved)

    targets = resolve_target_modules(cfg.target_modules, model)
    if targets == ALL_LINEAR:
        heads = _output_head_names(model)
        chosen = [n for n in linear if n not in heads and not set(n.split(".")) & set(HEAD_NAMES)]
    elif isinstance(targets, str):
        chosen = [n for n in linear if re.fullmatch(targets, n)]
    else:
        chosen = [n for n in linear if any(name_matches(n, t, regex=False) for t in targets)]
    chosen = [n for n in chosen if not inside_saved(n)]
    if not chosen:
        shown = list(targets) if isinstance(targets, tuple) else targets
        raise ValueError(f"target_modules={shown!r} matches none of the model's Linear/Conv1D modules "
                         f"(outside modules_to_save={list(cfg.modules_to_save)}); their names end in: "
                         f"{', '.join(linear_suffixes(model))}")
    for what, patterns in (("rank_pattern", cfg.rank_pattern), ("alpha_pattern", cfg.alpha_pattern)):
        for p in patterns:
            if not any(name_matches(n, p) for n in chosen):
                adapted = ", ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in chosen))
                raise ValueError(f"{what} key {p!r} matches no adapted module; adapted module names end in: "
                                 f"{adapted}")
    return {n: cfg.rank_alpha(n) for n in chosen}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap the matching Linear/Conv1D modules of `model` in LoraLinear, in place.

    Freezes every parameter, then unfreezes the adapters (B only with `freeze_a`; DoraLinear's
    magnitude with `use_dora`) and the `modules_to_save` modules (e.g. a classification head). Stores the config as `model.lora_config`, with "query+value" resolved to
    the family's names (so a saved adapter_config.json names real modules). Returns the adapted
    names, sorted.

    Raises:
        TypeError: `cfg` is not a LoraConfig (settings are checked once, when it is built).
        ValueError: the model already has LoRA layers, or a target / modules_to_save / pattern
            names no module of this model; the model is left untouched.
    """
    if not isinstance(cfg, LoraConfig):
        raise TypeError(f"cfg={cfg!r}: apply_lora takes a LoraConfig, e.g. apply_lora(model, LoraConfig(r=8))")
    cfg = replace(cfg, target_modules=resolve_target_modules(cfg.target_modules, model))
    plan = plan_lora(model, cfg)
    model.requires_grad_(False)
    layer_type = DoraLinear if cfg.use_dora else LoraLinear
    for name, (r_i, alpha_i) in plan.items():
        layer = layer_type(model.get_submodule(name), r_i, alpha_i, cfg.dropout, cfg.init, cfg.rslora)
        if cfg.freeze_a:  # LoRA-FA: A stays the random projection it was initialised to
            layer.lora_A.requires_grad_(False)
        _set_submodule(model, name, layer)
    for name in match_modules_to_save(model, cfg.modules_to_save):
        model.get_submodule(name).requires_grad_(True)
    model.lora_config = cfg
    return sorted(plan)


def merge_lora(model: nn.Module) -> None:
    """Merge every LoraLinear (see LoraLinear.merge)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Unmerge every LoraLinear (see LoraLinear.unmerge)."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def unload_lora(model: nn.Module) -> nn.Module:
    """Merge the adapters and put each base layer back: a plain model whose state_dict (and
    save_pretrained output) has no LoRA keys. Parameters keep their requires_grad flags."""
    for name, layer in lora_layers(model).items():
        if not layer.merged:
            layer.merge()
        if not name:  # the model itself is one LoraLinear
            return layer.base
        _set_submodule(model, name, layer.base)
    if "lora_config" in vars(model):
        del model.lora_config
    return model
