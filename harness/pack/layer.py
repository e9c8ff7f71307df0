"""The packed model: one frozen base, K jobs' adapters and heads, one forward over all their rows.

Each job keeps a whole model of its own (`models[k]`: its LoraLinear layers and head modules,
exactly what a solo run builds), whose frozen tensors are the *same* tensors as job 0's
(`share_frozen`), so the base is held once. `PackedModel` is a second view of those tensors: at a
layer some job adapts, `PackedLoraLinear` computes the base product once over the concatenation
of every job's micro-batch and adds each job's own low-rank path to its own rows; at a head
(`modules_to_save`), `PackedHead` runs each job's own copy on its rows. Which rows belong to which
job is `Segments`, set before each forward. Evaluation, saving and checkpoints use `models[k]`
itself, so they are those of a solo run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from harness.data import IGNORE_INDEX
from harness.lora import LoraLinear, lora_layers, match_modules_to_save


@dataclass
class Segments:
    """[(job index, first row, row after the last)] of the current packed batch (rows: dim 0)."""
    spans: list[tuple[int, int, int]] = field(default_factory=list)


class PackedLoraLinear(nn.Module):
    """y[rows of job k] = base(x)[rows] + s_k * B_k A_k dropout_k(x[rows]); jobs without an
    adapter here (`layers[k] is None`) get base(x)[rows] alone. The base GEMM runs once."""

    def __init__(self, base: nn.Module, layers: list[LoraLinear | None], segments: Segments):
        super().__init__()
        self.base, self.segments = base, segments
        self.layers = layers  # a plain list: the jobs' parameters belong to their own models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.segments.spans) == 1:  # one job's rows (forward=per_job, or the last job left):
            layer = self.layers[self.segments.spans[0][0]]  # its own layer, whose base is the shared one,
            return self.base(x) if layer is None else layer(x)  # so exactly what its solo run computes
        y = self.base(x)
        pieces = []
        for k, start, stop in self.segments.spans:
            layer = self.layers[k]
            if layer is None:
                pieces.append(y[start:stop])
                continue
            h = nn.functional.linear(layer.dropout(x[start:stop]), layer.lora_A.weight)
            pieces.append(y[start:stop] + layer.scaling * nn.functional.linear(h, layer.lora_B.weight))
        return torch.cat(pieces)


class PackedHead(nn.Module):
    """Each job's own copy of a trained head module (classifier, pooler) on its own rows."""

    def __init__(self, heads: list[nn.Module], segments: Segments):
        super().__init__()
        self.heads, self.segments = heads, segments

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if len(self.segments.spans) == 1:
            return self.heads[self.segments.spans[0][0]](x, *args, **kwargs)
        return torch.cat([self.heads[k](x[start:stop], *args, **kwargs) for k, start, stop in self.segments.spans])


def _frozen_by_base_name(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """{name as in the plain model: (owning module, attribute)} for every frozen parameter and buffer;
    a LoraLinear's `x.base.weight` is named `x.weight`, so differently adapted models line up."""
    wrapped = {name + ".base": name for name in lora_layers(model)}
    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            continue
        plain = wrapped.get(mod_name, mod_name)
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None and not t.requires_grad:
                out[f"{plain}.{attr}" if plain else attr] = (module, attr)
    return out


def share_frozen(reference: nn.Module, model: nn.Module) -> int:
    """Make every frozen parameter and buffer of `model` the very tensor of `reference` (same name
    in the plain model); returns how many were shared. Both must come from the same checkpoint,
    loaded the same way: the values are checked equal, so a job whose init rewrote its base (PiSSA)
    can never silently train on another job's weights."""
    ref = _frozen_by_base_name(reference)
    shared = 0
    for name, (module, attr) in _frozen_by_base_name(model).items():
        if name not in ref:
            continue
        ref_module, ref_attr = ref[name]
        source = getattr(ref_module, ref_attr)
        mine = getattr(module, attr)
        if source.shape != mine.shape or not torch.equal(source, mine):
            raise ValueError(f"{name}: the packed jobs' frozen weights differ; they cannot share one base")
        if attr in module._parameters:
            module._parameters[attr] = source
        else:
            module._buffers[attr] = source
        shared += 1
    return shared


class PackedModel(nn.Module):
    """The K jobs' models as one: call it with the concatenated batch after `set_rows`."""

    def __init__(self, models: list[nn.Module], heads: list[str]):
        super().__init__()
        self.segments = Segments()
        # A structural copy of job 0's model that shares every tensor (the memo maps each to itself).
        memo = {id(t): t for t in list(models[0].parameters()) + list(models[0].buffers())}
        net = copy.deepcopy(models[0], memo)
        per_job = [lora_layers(m) for m in models]
        for name in sorted(set().union(*per_job)):
            here = net.get_submodule(name)
            base = here.base if isinstance(here, LoraLinear) else here
            _set(net, name, PackedLoraLinear(base, [layers.get(name) for layers in per_job], self.segments))
        for name in heads:
            _set(net, name, PackedHead([m.get_submodule(name) for m in models], self.segments))
        self.net = net

    def set_rows(self, sizes: list[tuple[int, int]]) -> None:
        """[(job index, rows)] in the order the batch was concatenated."""
        self.segments.spans.clear()
        start = 0
        for k, n in sizes:
            self.segments.spans.append((k, start, start + n))
            start += n

    def forward(self, **batch):
        return self.net(**batch)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def head_names(model: nn.Module) -> list[str]:
    """The trained head modules of a LoRA model (its modules_to_save, as apply_lora matched them)."""
    return match_modules_to_save(model, model.lora_config.modules_to_save)


PAD = {"attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX}


def concat_batches(batches: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The jobs' micro-batches as one batch, each padded on the right to the longest (as the
    collator pads): padded keys are masked out of attention, so every real position computes what
    it computes in its own batch, up to float rounding. 1-D labels (classes) are concatenated.
    One batch (forward=per_job) comes back as it is, not padded and copied into itself."""
    if len(batches) == 1:
        return dict(batches[0])
    width = max(b["input_ids"].shape[1] for b in batches)
    out = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if parts[0].dim() == 2:
            value = pad_token_id if key == "input_ids" else PAD.get(key, 0)
            parts = [nn.functional.pad(p, (0, width - p.shape[1]), value=value) for p in parts]
        out[key] = torch.cat(parts)
    return out
