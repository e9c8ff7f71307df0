"""What an adapter is, as settings: `LoraConfig`, its value checks, and the "query+value" table.

Every check raises harness.schema's ConfigError with the one-line `key=value is invalid: ...`
message, so a bad `method.r` on the command line and a bad `r` in an adapter_config.json read the
same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from harness.schema import ConfigError, check, choices

INITS = ("kaiming", "gaussian", "pissa", "olora")
# Inits that take W's own principal part into A and B and freeze the residual W - s B0 A0 in the
# base; adapter files carry them as a plain delta on the original W (files.py).
RESIDUAL_INITS = ("pissa", "olora")
ALL_LINEAR = "all-linear"
# The LoRA paper's placement, spelled once for every architecture: each family's attention query and
# value projections, looked up by `model.config.model_type` when LoRA is applied (as peft's
# per-architecture defaults are). Families that fuse q, k and v into one layer (GPT-2's c_attn,
# GPT-NeoX's query_key_value, ...) get that layer. The names agree with peft's
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING where it has the family, except phi (peft adds
# fc1/fc2, which are not attention); tests/lora/test_config.py builds every family and checks the names.
QUERY_VALUE = "query+value"
QUERY_VALUE_TARGETS = {
    # encoders
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "camembert": ("query", "value"), "electra": ("query", "value"), "albert": ("query", "value"),
    "layoutlm": ("query", "value"), "distilbert": ("q_lin", "v_lin"), "mpnet": ("q", "v"),
    "deberta": ("in_proj",), "deberta-v2": ("query_proj", "value_proj"), "modernbert": ("Wqkv",),
    # encoder-decoders
    "t5": ("q", "v"), "mt5": ("q", "v"), "bart": ("q_proj", "v_proj"),
    # decoders
    "gpt2": ("c_attn",), "gpt_bigcode": ("c_attn",), "gpt_neo": ("q_proj", "v_proj"), "gptj": ("q_proj", "v_proj"),
    "gpt_neox": ("query_key_value",), "bloom": ("query_key_value",), "falcon": ("query_key_value",),
    "mpt": ("Wqkv",), "codegen": ("qkv_proj",), "phi3": ("qkv_proj",), "opt": ("q_proj", "v_proj"),
    **{family: ("q_proj", "v_proj") for family in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "gemma3_text", "phi",
        "stablelm", "starcoder2", "olmo", "olmo2", "granite", "smollm3")},
}


_TARGETS_HELP = f"give module names ([query,value]), one regex, {ALL_LINEAR} or {QUERY_VALUE}"


def check_r(name: str, r) -> int:
    check(not isinstance(r, bool) and isinstance(r, int) and r > 0, name, r, "must be a positive integer")
    return r


def check_alpha(name: str, alpha) -> float:
    check(not isinstance(alpha, bool) and isinstance(alpha, (int, float)) and alpha > 0, name, alpha,
          "must be a positive number")
    return alpha


def check_dropout(p) -> float:
    check(not isinstance(p, bool) and isinstance(p, (int, float)) and 0 <= p < 1, "dropout", p,
          "must be a number in [0, 1)")
    return float(p)


def check_bool(name: str, value) -> bool:
    check(isinstance(value, bool), name, value, "must be true or false")
    return value


def check_init(init) -> str:
    check(init in INITS, "init", init, choices(INITS))
    return init


def _check_regex(what: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{what}={pattern!r} is invalid: not a valid regular expression ({e})") from e


def name_matches(name: str, pattern: str, regex: bool = True) -> bool:
    """Module-name match used everywhere: exact name, `.`-suffix, or (if regex) full regex match."""
    if name == pattern or name.endswith("." + pattern):
        return True
    return regex and re.fullmatch(pattern, name) is not None


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """alpha / r (LoRA), or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023: keeps updates rank-stable)."""
    return alpha / (math.sqrt(r) if rslora else r)


@dataclass
class LoraConfig:
    """Everything `apply_lora` needs; stored on the model as `model.lora_config` for saving.

    target_modules: names or name suffixes (a list), one regex fully matched against module names
    (a str), "all-linear", or "query+value" (the model family's attention query and value
    projections, `QUERY_VALUE_TARGETS`; resolved to names by `apply_lora`). rank_pattern /
    alpha_pattern: {suffix or regex: value} overriding r / alpha for matching module names (first
    matching pattern wins).
    """

    r: int = 8
    alpha: float = 16
    target_modules: str | tuple[str, ...] = QUERY_VALUE
    dropout: float = 0.0
    init: str = "kaiming"
    rslora: bool = False
    modules_to_save: tuple[str, ...] = ()
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_dora: bool = False   # DoRA (Liu et al. 2024): DoraLinear, a trained magnitude per output feature
    freeze_a: bool = False   # LoRA-FA (Zhang et al. 2023): A stays at its random init, only B trains

    def __post_init__(self):
        check_r("r", self.r)
        check_alpha("alpha", self.alpha)
        self.dropout = check_dropout(self.dropout)
        check_init(self.init)
        self.rslora = bool(self.rslora)
        self.use_dora = check_bool("use_dora", self.use_dora)
        self.freeze_a = check_bool("freeze_a", self.freeze_a)
        # LoRA-FA's A is a frozen *random* projection (B = 0, so the update starts at zero and B
        # learns in a fixed random subspace). pissa / olora put W's principal rows in A and a
        # non-zero B0 in B; freezing that A is another method, which no paper measured: refused,
        # so a sweep over init x freeze_a cannot silently produce an untested hybrid.
        check(not (self.freeze_a and self.init in RESIDUAL_INITS), "freeze_a", self.freeze_a,
              f"LoRA-FA freezes a random A; init={self.init} sets A from W, use kaiming or gaussian")
        # Sequences may arrive as lists or Hydra ListConfigs; a bare str is a regex (or "all-linear").
        if isinstance(self.target_modules, str):
            check(self.target_modules != "", "target_modules", "", _TARGETS_HELP)
            if self.target_modules not in (ALL_LINEAR, QUERY_VALUE):
                _check_regex("target_modules", self.target_modules)
        else:
            self.target_modules = tuple(str(t) for t in self.target_modules)
            check(self.target_modules != (), "target_modules", [], _TARGETS_HELP)
        if self.modules_to_save is None:
            self.modules_to_save = ()
        elif isinstance(self.modules_to_save, str):
            self.modules_to_save = (self.modules_to_save,)
        else:
            self.modules_to_save = tuple(str(m) for m in self.modules_to_save)
        self.rank_pattern = dict(self.rank_pattern or {})
        self.alpha_pattern = dict(self.alpha_pattern or {})
        for pattern, value in self.rank_pattern.items():
            _check_regex("rank_pattern key", pattern)
            check_r(f"rank_pattern[{pattern!r}]", value)
        for pattern, value in self.alpha_pattern.items():
            _check_regex("alpha_pattern key", pattern)
            check_alpha(f"alpha_pattern[{pattern!r}]", value)

    def rank_alpha(self, name: str) -> tuple[int, float]:
        """(r, alpha) for one module name after rank_pattern / alpha_pattern overrides."""
        r = next((v for p, v in self.rank_pattern.items() if name_matches(name, p)), self.r)
        alpha = next((v for p, v in self.alpha_pattern.items() if name_matches(name, p)), self.alpha)
        return r, alpha

    def scaling_for(self, name: str) -> float:
        r, alpha = self.rank_alpha(name)
        return lora_scaling(r, alpha, self.rslora)
