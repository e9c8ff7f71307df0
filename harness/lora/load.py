"""Loading an adapter file onto a model: check that it fits, inject LoRA if needed, copy the tensors in.

Every check runs before the model is touched, so a file that does not fit (another base, another
rank, a modified file) leaves the model as it was.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch
import torch.nn as nn

from harness.lora.config import RESIDUAL_INITS, LoraConfig, name_matches
from harness.lora.files import PREFIX, lora_config_from_peft, lora_config_of, read_adapter
from harness.lora.inject import apply_lora, has_lora, lora_layers, match_modules_to_save, plan_lora
from harness.lora.layer import in_out_features


def _expected_shapes(model: nn.Module, cfg: LoraConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape this model needs from an adapter with config `cfg`."""
    shapes = {}
    if has_lora(model):
        for name, layer in lora_layers(model).items():
            shapes[f"{PREFIX}{name}.lora_A.weight"] = tuple(layer.lora_A.weight.shape)
            shapes[f"{PREFIX}{name}.lora_B.weight"] = tuple(layer.lora_B.weight.shape)
            if cfg.use_dora:
                shapes[f"{PREFIX}{name}.lora_magnitude_vector"] = (layer.out_features,)
    else:
        for name, (r, _) in plan_lora(model, cfg).items():
            in_f, out_f = in_out_features(model.get_submodule(name))
            shapes[f"{PREFIX}{name}.lora_A.weight"] = (r, in_f)
            shapes[f"{PREFIX}{name}.lora_B.weight"] = (out_f, r)
            if cfg.use_dora:
                shapes[f"{PREFIX}{name}.lora_magnitude_vector"] = (out_f,)
    for root in match_modules_to_save(model, cfg.modules_to_save):
        for pname, p in model.get_submodule(root).named_parameters(remove_duplicate=False):
            shapes[f"{PREFIX}{root}.{pname}"] = tuple(p.shape)
    return shapes


def _check_fit(expected: dict, tensors: dict, path, config: dict) -> None:
    trained_on = config.get("base_model_name_or_path")
    hint = f" (adapter trained on {trained_on!r})" if trained_on else ""
    for key, t in tensors.items():
        if key not in expected:
            raise ValueError(f"{path}: key {key!r} maps to no LoRA or modules_to_save parameter of this model{hint}")
        if tuple(t.shape) != expected[key]:
            raise ValueError(f"{path}: {key}: file has shape {tuple(t.shape)}, the model expects "
                             f"{expected[key]}{hint}")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{path}: missing {len(missing)} tensor(s) the model needs, e.g. {missing[0]!r}{hint}")


def prepare_adapter(model: nn.Module, path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Read and validate an adapter against `model`; inject LoRA per its config if the model has none.
    Nothing is changed on the model unless every check passes."""
    config, tensors = read_adapter(path)
    cfg = lora_config_from_peft(config, path)
    # peft lists both "classifier" and "score" for SEQ_CLS models; like peft, skip entries naming no module.
    names = [n for n, _ in model.named_modules() if n]
    kept = tuple(e for e in cfg.modules_to_save if any(name_matches(n, e, regex=False) for n in names))
    cfg = replace(cfg, modules_to_save=kept)
    ours = getattr(getattr(model, "config", None), "_name_or_path", None)
    theirs = config.get("base_model_name_or_path")
    if ours and theirs and str(ours) != str(theirs):  # paths vs hub ids differ legitimately: warn only
        warnings.warn(f"{path}: adapter was trained on {theirs!r}, model is {ours!r}", stacklevel=3)
    if has_lora(model):
        own = lora_config_of(model)
        residual = {cfg.init, own.init} & set(RESIDUAL_INITS)
        if residual and cfg.init != own.init:
            raise ValueError(f"{path}: init={cfg.init!r} but the model's LoRA uses init={own.init!r}; "
                             f"{'/'.join(sorted(residual))} replaces the base weight by a residual of its own, "
                             "so these adapters cannot share one base")
        if cfg.use_dora != own.use_dora:
            raise ValueError(f"{path}: use_dora={cfg.use_dora} but the model's LoRA layers have "
                             f"use_dora={own.use_dora}; load it onto a fresh base")
    _check_fit(_expected_shapes(model, cfg), tensors, path, config)
    if not has_lora(model):
        apply_lora(model, cfg)
    return cfg, tensors


@torch.no_grad()
def copy_adapter_in(model: nn.Module, cfg: LoraConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into the model's parameters in place and set each layer's scaling."""
    layers = lora_layers(model)
    merged = [layer for layer in layers.values() if layer.merged]
    for layer in merged:  # the merged delta belongs to the old adapter: take it out first
        layer.unmerge()
    params = dict(model.named_parameters(remove_duplicate=False))
    for key, t in tensors.items():
        params[key[len(PREFIX):]].copy_(t)
    for name, layer in layers.items():
        layer.alpha = cfg.rank_alpha(name)[1]
        layer.scaling = cfg.scaling_for(name)
    for layer in merged:
        layer.merge()
    model.lora_config = cfg


def load_adapter(model: nn.Module, path) -> list[str]:
    """Load an adapter folder onto `model` (a fresh base model, or one already adapted with the same
    module set and ranks) and return the adapted module names, sorted."""
    cfg, tensors = prepare_adapter(model, path)
    copy_adapter_in(model, cfg, tensors)
    return sorted(lora_layers(model))
