"""The one error style for config values, and the typed merge of a config group onto its dataclass.

Every package that owns settings (lora, data, telemetry, train) checks them with these, so a bad
value anywhere fails with the same one line — `key=value is invalid: what is allowed` — and no
package below the config tree has to import it.
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """A config value that cannot run; the message is the one line the user sees."""


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def choices(options) -> str:
    """'choose a, b or c' for an error message."""
    options = [str(o) for o in options]
    return "choose " + (", ".join(options[:-1]) + " or " + options[-1] if len(options) > 1 else options[0])


def _describe(tp) -> str:
    """What a dataclass field's type accepts, in words: Optional[int] -> 'must be an integer or null'."""
    optional = False
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else Any
    origin = typing.get_origin(tp) or tp
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             list: "a list, e.g. [a,b]", tuple: "a list, e.g. [a,b]", dict: "a mapping, e.g. {a:1}"}
    return "must be " + words.get(origin, "a value") + (" or null" if optional else "")


def _lookup(values: Any, dotted: str) -> Any:
    """values['a']['b'] for 'a.b' (and 'a[0]'), or '???' when the path is not there."""
    node = values
    for part in re.findall(r"[^.\[\]]+", dotted):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return "???"
    return node


def typed(group: str, schema: type, node: DictConfig | dict):
    """Merge a config group onto its dataclass and build it, turning OmegaConf errors into one line:
    `group.key=value is invalid: what the field's type allows` (or, for an unknown key, the settings
    the group has)."""
    if not isinstance(node, DictConfig):
        node = OmegaConf.create(node)
    missing = sorted(OmegaConf.missing_keys(node))  # full keys from the root: task.data_files
    if missing:
        key = missing[0] if missing[0].startswith(group + ".") else f"{group}.{missing[0]}"
        raise ConfigError(f"{key}=??? is invalid: a value is required (set it on the command line: {key}=...)")
    try:
        values = OmegaConf.to_container(node, resolve=True)  # resolved in place: ${method.r} needs the root
    except OmegaConfBaseException as e:
        key = f"{group}.{e.full_key}" if getattr(e, "full_key", None) else group
        raise ConfigError(f"{key} is invalid: {str(e).splitlines()[0]}") from None
    settings = list(schema.__dataclass_fields__)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        key = str(getattr(e, "key", None) or (e.full_key or "").split(".")[0])
        close = difflib.get_close_matches(key, settings, n=1)
        hint = f" (did you mean {group}.{close[0]}?)" if close else ""
        raise ConfigError(f"{group}.{key}={_lookup(values, key)!r} is invalid: not a {group} setting{hint}; "
                          f"settings: {', '.join(settings)}") from None
    except OmegaConfBaseException as e:
        full_key = getattr(e, "full_key", None) or ""
        top = re.split(r"[.\[]", full_key)[0]
        if top not in settings:
            raise ConfigError(f"{group}: {str(e).splitlines()[0]}") from None
        hints = typing.get_type_hints(schema)
        raise ConfigError(f"{group}.{top}={_lookup(values, top)!r} is invalid: {_describe(hints[top])}") from None
