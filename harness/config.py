"""Typed check of a composed config, before anything heavy loads.

Hydra composes plain YAML; merging the `method` and `trainer` groups onto these dataclasses makes a
typo'd key or a wrong type fail at start, and `__post_init__` range checks make a bad value fail
with one line that names the key, the value and what is allowed — before the model loads, so a bad
sweep job costs a second, not a model load.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.lora import LoraConfig
from harness.tracking import redact_text


def _without_secrets(override_dirname: str) -> str:
    """Drop the overrides that carry a secret (`+model.token=hf_...`): a folder name is copied into
    every file that names the run folder. Items are split at commas outside brackets and quotes."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(override_dirname + ","):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth <= 0:
            items.append(override_dirname[start:i])
            start = i + 1
    return ",".join(item for item in items if item and redact_text(item) == item)


def _dirname(override_dirname: str, limit: int = 180) -> str:
    """A folder name from Hydra's override string: never empty, never nested, never longer than
    file systems allow (255 bytes): a long one is cut and made unique by a hash of the whole.
    Overrides carrying secrets are left out of it."""
    name = _without_secrets(override_dirname).replace("/", "_") or "default"
    if len(name.encode()) > limit:
        digest = hashlib.md5(name.encode()).hexdigest()[:10]
        name = name.encode()[:limit].decode(errors="ignore") + "~" + digest
    return name


OmegaConf.register_new_resolver("dirname", _dirname, replace=True)
OmegaConf.register_new_resolver("mul", lambda a, b: a * b, replace=True)  # alpha = 2r in rank sweeps


class ConfigError(ValueError):
    """A config value that cannot run; the message is the one line the user sees."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


@dataclass
class MethodConfig:
    name: str = "lora"
    lr: float = 2e-3
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: Any = field(default_factory=lambda: ["query", "value"])  # list or "all-linear"/regex
    init: str = "kaiming"
    rslora: bool = False
    modules_to_save: Optional[list] = None
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)

    def __post_init__(self):
        _check(self.name in ("lora", "full"), "method", self.name, "choose lora or full")
        _check(self.lr > 0, "method.lr", self.lr, "must be > 0")
        if self.name == "lora":
            try:
                self.lora_config()
            except ValueError as e:
                raise ConfigError(f"method.{e}") from None

    def lora_config(self, head_modules=()) -> LoraConfig:
        targets = self.target_modules
        if not isinstance(targets, str):
            targets = list(targets)
        return LoraConfig(
            r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=targets, init=self.init,
            rslora=self.rslora,
            modules_to_save=list(head_modules if self.modules_to_save is None else self.modules_to_save),
            rank_pattern=dict(self.rank_pattern), alpha_pattern=dict(self.alpha_pattern),
        )


@dataclass
class TrainerConfig:
    device: str = "auto"
    precision: str = "bf16"
    epochs: float = 1
    max_steps: Optional[int] = None
    batch_size: int = 32
    grad_accum: int = 1
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: Optional[float] = 1.0
    eval_every: Optional[int] = None
    eval_batch_size: int = 128
    log_every: int = 10
    timing_warmup_steps: int = 3
    gradient_checkpointing: bool = False
    checkpoint_every: Optional[int] = None
    keep_checkpoints: int = 2
    on_nan: str = "fail"
    save_model: bool = True
    select_best: bool = False
    num_workers: int = 0
    restart: bool = False  # true: do not continue from checkpoints; set them aside and start afresh
    optimizer: Any = None

    def __post_init__(self):
        _check(self.device in ("auto", "cpu", "cuda"), "trainer.device", self.device, "choose auto, cpu or cuda")
        _check(self.precision in ("bf16", "fp32"), "trainer.precision", self.precision, "choose bf16 or fp32")
        _check(self.epochs > 0, "trainer.epochs", self.epochs, "must be > 0")
        _check(self.max_steps is None or self.max_steps > 0, "trainer.max_steps", self.max_steps, "must be > 0 or null")
        for key in ("batch_size", "grad_accum", "eval_batch_size", "log_every", "keep_checkpoints"):
            _check(getattr(self, key) >= 1, f"trainer.{key}", getattr(self, key), "must be >= 1")
        _check(self.weight_decay >= 0, "trainer.weight_decay", self.weight_decay, "must be >= 0")
        _check(0 <= self.warmup_ratio < 1, "trainer.warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "trainer.max_grad_norm",
               self.max_grad_norm, "must be > 0 or null")
        for key in ("eval_every", "checkpoint_every"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"trainer.{key}", value, "must be >= 1 or null")
        _check(self.timing_warmup_steps >= 0, "trainer.timing_warmup_steps", self.timing_warmup_steps, "must be >= 0")
        _check(self.on_nan in ("fail", "skip"), "trainer.on_nan", self.on_nan, "choose fail or skip")
        _check(self.num_workers >= 0, "trainer.num_workers", self.num_workers, "must be >= 0")


def typed(group: str, schema: type, node: DictConfig):
    """Merge a config group onto its dataclass and build it, turning OmegaConf errors into one line."""
    try:
        values = OmegaConf.to_container(node, resolve=True)  # resolved in place: ${method.r} needs the root
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = f"{group}.{e.full_key}" if getattr(e, "full_key", None) else group
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {msg}") from None


def validate(cfg: DictConfig) -> tuple[MethodConfig, TrainerConfig]:
    """Check the whole config; return the typed method and trainer settings."""
    _check(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", cfg.seed, "must be an int >= 0")
    method = typed("method", MethodConfig, cfg.method)
    trainer = typed("trainer", TrainerConfig, cfg.trainer)
    return method, trainer
