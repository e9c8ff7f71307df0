"""Secret redaction: tokens, passwords and API keys never reach a file, a log line or W&B.

Everything the harness writes about a run (the W&B config and summary, results.json, Hydra's
`.hydra/*.yaml`, every log record) passes through `redact` or `redact_text` first, and
`install_secret_redaction` redacts every log line of the process whatever handler writes it.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REDACTED = "***REDACTED***"

# A key is secret when its last word is one of these ("hf_token", "WANDB_API_KEY", "db.password"),
# matched on whole words so "tokens_per_s" or "tokenizer" are not.
_SECRET_KEY = re.compile(
    r"(?:^|[_.])(?:api_?key|apikey|access_?key|private_?key|secret(?:_?key)?|password|passwd|"
    r"credentials?|token)$",
    re.IGNORECASE,
)
# ...except tokenizer settings whose values are vocabulary strings, not credentials.
_TOKENIZER_TOKEN = re.compile(r"^(?:pad|eos|bos|unk|sep|cls|mask|additional_special)_tokens?$", re.I)
# Hugging Face tokens look like this wherever they appear, alone or inside a longer string.
_HF_TOKEN_TEXT = re.compile(r"hf_[A-Za-z0-9]{30,}")
# `key=value` inside a string: a Hydra override ("+model.token=abc"), an override_dirname
# ("seed=0,+model.token=abc"), a command line in a log line.
_ASSIGNMENT = re.compile(r"(?P<key>[+~]*[A-Za-z_][\w.\-]*)=(?P<value>'[^']*'|\"[^\"]*\"|[^\s,'\"\]\)}]+)")
_HARMLESS_VALUES = {"true", "false", "null", "none", REDACTED.lower()}  # `use_auth_token=true` reveals nothing
# The usual secret environment variables; any other variable whose name looks secret (`*_TOKEN`,
# `*_API_KEY`, `*_PASSWORD`, ...) counts too. Values shorter than this are not searched for inside
# strings: a 1-character "secret" would redact every string holding that character.
_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN", "GITHUB_TOKEN",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "OPENAI_API_KEY")
_MIN_ENV_SECRET = 8


def _is_secret_key(key: Any) -> bool:
    key = str(key).replace("-", "_")
    # `flops_per_token` is a rate, not a credential (a numeric password, `db.password=123`, is one)
    return bool(_SECRET_KEY.search(key)) and not _TOKENIZER_TOKEN.match(key) and not key.lower().endswith("per_token")


def _env_secrets() -> list[str]:
    """Values of secret environment variables, longest first (so no secret is half-replaced)."""
    names = set(_SECRET_ENV) | {k for k in os.environ if _is_secret_key(k)}
    values = {os.environ[k] for k in names if len(os.environ.get(k) or "") >= _MIN_ENV_SECRET}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, env_secrets: Sequence[str] | None = None) -> str:
    """`text` with secrets inside it replaced: values of secret environment variables, anything
    shaped like a Hugging Face token, and the value of every `key=value` whose key looks secret."""
    for secret in _env_secrets() if env_secrets is None else env_secrets:
        text = text.replace(secret, REDACTED)
    text = _HF_TOKEN_TEXT.sub(REDACTED, text)

    def assignment(m: re.Match) -> str:
        leaf = m["key"].lstrip("+~").rsplit(".", 1)[-1]
        if _is_secret_key(leaf) and m["value"].strip("'\"").lower() not in _HARMLESS_VALUES:
            return f"{m['key']}={REDACTED}"
        return m[0]

    return _ASSIGNMENT.sub(assignment, text)


def redact(config: Any) -> Any:
    """Copy `config` as plain dicts/lists with secret values replaced by "***REDACTED***".

    Secret = the value of a key that looks secret (`api_key`, `hf_token`, `password`, ...; None and
    booleans such as `use_auth_token: true` are kept because they reveal nothing), and inside every
    string what `redact_text` finds: a secret environment variable's value (`WANDB_API_KEY`,
    `HF_TOKEN`, ...), a string shaped like a Hugging Face token, the value in a `key=value` override
    whose key is secret.
    """
    env_secrets = _env_secrets()

    def walk(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return {k: (REDACTED if _is_secret_key(k) and v is not None and not isinstance(v, bool)
                        else walk(v)) for k, v in obj.items()}
        if isinstance(obj, str):
            return redact_text(obj, env_secrets)
        if isinstance(obj, Sequence | set | frozenset) and not isinstance(obj, bytes | bytearray):
            return [walk(v) for v in obj]
        return obj

    return walk(config)


def redact_yaml_file(path: Path) -> bool:
    """Rewrite a YAML file (Hydra's `.hydra/*.yaml`, `multirun.yaml`) with its secrets redacted.

    Hydra writes these before the job function runs, with every override verbatim, so a token
    given on the command line would sit in the run folder. Interpolations stay unresolved. Written
    atomically and only when something changed; returns whether it did.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        return False
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    clean = redact(data)
    if clean == data:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(clean)))
    os.replace(tmp, path)
    return True


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed call: logging reports it when the record is emitted
        return
    clean = redact_text(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))


def install_secret_redaction() -> None:
    """Redact secrets from every log record as it is created (its message and its traceback), in
    this process, whatever handlers write it later: Hydra's launcher logs every job's overrides
    verbatim, after configuring its own handlers, and each job's console and `train.log` handlers
    are made anew from `hydra/job_logging`. A record factory outlives all of that (a handler filter
    would not). Idempotent."""
    base = logging.getLogRecordFactory()
    if getattr(base, "redacts_secrets", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        _redact_record(record)
        return record

    factory.redacts_secrets = True
    logging.setLogRecordFactory(factory)
