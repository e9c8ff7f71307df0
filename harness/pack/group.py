"""Which jobs of a sweep can share a pack, and the groups they form.

Jobs share a pack when everything the frozen base and the batches depend on is the same: the
model (checkpoint, dtype, its dropout, config overrides), the task (data, limits, max length),
batch size, accumulation, step budget, precision and device, and the head modules that train.
What each job owns (r, alpha, dropout, init, target modules, lr, seed, eval schedule, logging)
may differ.
"""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

SHARED = ("model", "task", "paths", "trainer.batch_size", "trainer.grad_accum", "trainer.max_steps",
          "trainer.epochs", "trainer.precision", "trainer.device", "trainer.gradient_checkpointing",
          "trainer.num_workers", "method.modules_to_save")


def pack_reason(cfg: DictConfig) -> str | None:
    """Why this job cannot train in a pack (it then runs as an ordinary job), None if it can.
    The one place that decides: a new method family extends it here."""
    method = cfg.get("method") or {}
    name = method.get("name")
    if name != "lora":
        return f"method={name}: only LoRA jobs share a frozen base"
    if method.get("init") in ("pissa", "olora"):
        return f"method.init={method.get('init')} rewrites the base weights it adapts, so its base is its own"
    if method.get("use_dora"):
        return "method.use_dora=true: DoRA rescales the base product per job, not a low-rank path beside it"
    if method.get("freeze_a"):
        return "method.freeze_a=true: LoRA-FA's frozen A is the job's own, not part of the shared base"
    return None  # LoRA+ (method.lr_ratio) packs: its ratio lives in the job's own optimizer


def pack_key(cfg: DictConfig) -> str:
    """Jobs with equal keys can share a pack (see SHARED)."""
    values = {key: OmegaConf.to_container(node, resolve=True) if isinstance(node := OmegaConf.select(cfg, key), DictConfig)
              else node for key in SHARED}
    return json.dumps(values, sort_keys=True, default=str)


def group_jobs(cfgs: list[DictConfig], max_pack: int) -> tuple[list[list[int]], dict[int, str]]:
    """(packs: lists of job indices, at most max_pack each, in sweep order; {index: why not} for
    the jobs that run alone). A pack of one is an ordinary job."""
    groups: dict[str, list[int]] = {}
    alone: dict[int, str] = {}
    for i, cfg in enumerate(cfgs):
        reason = pack_reason(cfg)
        if reason is None:
            groups.setdefault(pack_key(cfg), []).append(i)
        else:
            alone[i] = reason
    packs = []
    for members in groups.values():
        for start in range(0, len(members), max_pack):
            chunk = members[start:start + max_pack]
            if len(chunk) == 1:
                alone[chunk[0]] = "no other job shares its model, task and budget"
            else:
                packs.append(chunk)
    return packs, alone
