"""What Hydra rejects while composing, checked before Hydra runs, in the config's one-line error form.

`check_overrides` composes what a command line asks for (an unknown group option such as
`hydra/launcher=nope`, an unknown key without `+`, an unparsable override), whose own messages
span many lines; `harness-train` runs it before handing the command line to Hydra. The `dirname`
resolver names run folders (conf/config.yaml's hydra.run.dir) from the overrides.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.config import CONF_DIR, TOP_LEVEL, MethodConfig, ModelConfig, TrainerConfig
from harness.paths import PathsConfig
from harness.schema import ConfigError, choices


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
    _check_launcher(cfg)
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


def _check_launcher(cfg: DictConfig) -> None:
    """The packed launcher's own settings (max_pack, prune, forward), checked by building it as
    Hydra will (from its `_target_`, so this module does not import harness.pack, which imports
    harness.train): Hydra would report a bad one wrapped in four lines of its own."""
    if cfg.hydra.runtime.choices.get("hydra/launcher") != "packed":
        return
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        instantiate(cfg.hydra.launcher)
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


def _group_schema(group: str) -> type | None:
    """The dataclass a config group is checked against (see validate), None for free-form nodes."""
    from harness.data import TaskConfig
    from harness.telemetry import LoggerSettings

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
