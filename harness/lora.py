"""Low-rank adapters (LoRA, Hu et al. 2021) for nn.Linear and GPT-2's Conv1D, written without peft.

`LoraLinear` holds a frozen pretrained layer and adds a trainable low-rank path; `apply_lora` walks
the model and swaps matching layers in place (peft's three steps: walk `named_modules`, match the
name, `setattr` a wrapper that *holds* the base layer, so pretrained tensors are never copied);
`merge_lora` / `unmerge_lora` / `unload_lora` fold the adapter into the base weight for zero-latency
inference or export; `count_parameters` and `trainable_state_bytes` give what the paper compares.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

INITS = ("kaiming", "gaussian", "pissa")
ALL_LINEAR = "all-linear"
LINEAR_TYPES = (nn.Linear, Conv1D)
# Output heads that "all-linear" never adapts: they map to labels / the vocabulary, and LoRA papers
# either train them fully (modules_to_save) or leave them alone.
HEAD_NAMES = ("lm_head", "classifier", "score")
# The LoRA paper's placement, spelled once for every architecture: each family's attention query and
# value projections, looked up by `model.config.model_type` when LoRA is applied (as peft's
# per-architecture defaults are). Families that fuse q, k and v into one layer (GPT-2's c_attn,
# GPT-NeoX's query_key_value, ...) get that layer. The names agree with peft's
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING where it has the family, except phi (peft adds
# fc1/fc2, which are not attention); tests/test_lora.py builds every family and checks the names.
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


def _check_r(name: str, r) -> int:
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"{name}={r!r} is invalid: must be a positive integer")
    return r


def _check_alpha(name: str, alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"{name}={alpha!r} is invalid: must be a positive number")
    return alpha


def _check_dropout(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"dropout={p!r} is invalid: must be a number in [0, 1)")
    return float(p)


def _check_init(init) -> str:
    if init not in INITS:
        raise ValueError(f"init={init!r} is invalid: choose {', '.join(INITS[:-1])} or {INITS[-1]}")
    return init


def _check_regex(what: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{what}={pattern!r} is invalid: not a valid regular expression ({e})") from e


def in_out_features(base: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear (weight (out, in)) or Conv1D (weight (in, out))."""
    w = base.weight
    return (w.shape[0], w.shape[1]) if isinstance(base, Conv1D) else (w.shape[1], w.shape[0])


def name_matches(name: str, pattern: str, regex: bool = True) -> bool:
    """Module-name match used everywhere: exact name, `.`-suffix, or (if regex) full regex match."""
    if name == pattern or name.endswith("." + pattern):
        return True
    return regex and re.fullmatch(pattern, name) is not None


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

    def __post_init__(self):
        _check_r("r", self.r)
        _check_alpha("alpha", self.alpha)
        self.dropout = _check_dropout(self.dropout)
        _check_init(self.init)
        self.rslora = bool(self.rslora)
        # Sequences may arrive as lists or Hydra ListConfigs; a bare str is a regex (or "all-linear").
        if isinstance(self.target_modules, str):
            if not self.target_modules:
                raise ValueError(f"target_modules='' is invalid: {_TARGETS_HELP}")
            if self.target_modules not in (ALL_LINEAR, QUERY_VALUE):
                _check_regex("target_modules", self.target_modules)
        else:
            self.target_modules = tuple(str(t) for t in self.target_modules)
            if not self.target_modules:
                raise ValueError(f"target_modules=[] is invalid: {_TARGETS_HELP}")
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
            _check_r(f"rank_pattern[{pattern!r}]", value)
        for pattern, value in self.alpha_pattern.items():
            _check_regex("alpha_pattern key", pattern)
            _check_alpha(f"alpha_pattern[{pattern!r}]", value)

    def rank_alpha(self, name: str) -> tuple[int, float]:
        """(r, alpha) for one module name after rank_pattern / alpha_pattern overrides."""
        r = next((v for p, v in self.rank_pattern.items() if name_matches(name, p)), self.r)
        alpha = next((v for p, v in self.alpha_pattern.items() if name_matches(name, p)), self.alpha)
        return r, alpha

    def scaling_for(self, name: str) -> float:
        r, alpha = self.rank_alpha(name)
        return lora_scaling(r, alpha, self.rslora)


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """alpha / r (LoRA), or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023: keeps updates rank-stable)."""
    return alpha / (math.sqrt(r) if rslora else r)


class _LoraFunction(torch.autograd.Function):
    """y = x W^T + b + (s A x_d^T)^T B^T, with hand-written backward for GEMM layout, not maths.

    x_d is the dropped-out adapter input (None: the same tensor as x). Every thin product keeps the
    rank r as its *row* count: hT = s A x_d^T is (r, N), never (N, r). On CPU, MKL runs (N, in) @
    (in, r) 2-6x slower than (r, in) @ (in, N) for the same FLOPs, and autograd's generic backward
    of two nn.Linear calls picks the slow layouts; bench/train_step.py --plain measures the
    difference (all-linear MiniLM step 0.98x full FT with loralib's plain wrapper, 0.79x with this). The adapter output is added into the base
    output in place (addmm_), and dx sums the base and adapter paths in one buffer. The scale is
    applied to the thin (r, N) tensors only.

    Only what backward will read is saved (None for the rest), decided from which inputs need a
    gradient: with dropout on and the base frozen, x itself is needed by nothing (dA reads x_d, dx
    reads W, A and B), and keeping it would hold one more (N, in) activation per layer until
    backward: 2.99 MB instead of 2.20 MB for N=512 tokens of a 384x384 layer.
    """

    @staticmethod
    def forward(ctx, x, x_d, weight, bias, a, b, scaling, fan_in_fan_out):
        w_t = weight if fan_in_fan_out else weight.t()  # (in, out) view, no copy
        y = torch.addmm(bias, x, w_t) if bias is not None else torch.mm(x, w_t)
        ht = torch.mm(a, (x if x_d is None else x_d).t()).mul_(scaling)  # (r, N)
        y.addmm_(ht.t(), b.t())
        need_x, need_xd, need_w, _, need_a, need_b = ctx.needs_input_grad[:6]
        need_input = need_x or need_xd  # dx / dx_d: W, A and B
        keep = lambda t, needed: t if needed else None  # noqa: E731
        ctx.save_for_backward(
            keep(x, need_w or (x_d is None and need_a)),  # dW = gy^T x; dA = ght x when x_d is x
            keep(x_d, need_a),                            # dA = ght x_d
            keep(weight, need_x),                         # dx = gy W
            keep(a, need_input),                          # dx (adapter path) = ght^T A
            keep(b, need_input or need_a),                # ght = s B^T gy^T
            keep(ht, need_b),                             # dB = (ht gy)^T
        )
        ctx.scaling, ctx.fan_in_fan_out, ctx.separate = scaling, fan_in_fan_out, x_d is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        x, x_d, weight, a, b, ht = ctx.saved_tensors
        need_x, need_xd, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:6]
        grad_x = grad_xd = grad_w = grad_bias = grad_a = grad_b = None
        # (r, N): d loss / d (A x_d^T); b is saved exactly when some gradient needs it
        ght = torch.mm(b.t(), gy.t()).mul_(ctx.scaling) if b is not None else None
        if need_a:
            grad_a = torch.mm(ght, x_d if ctx.separate else x)  # (r, in)
        if need_b:
            grad_b = torch.mm(ht, gy).t()  # (out, r), computed as (r, N) @ (N, out)
        if need_x:
            grad_x = torch.mm(gy, weight.t() if ctx.fan_in_fan_out else weight)  # base path
            if not ctx.separate:
                grad_x.addmm_(ght.t(), a)  # adapter path into the same buffer (else via grad_xd)
        if need_xd:
            grad_xd = torch.mm(ght.t(), a)
        if need_w:  # only when someone unfroze the base weight
            grad_w = torch.mm(x.t(), gy) if ctx.fan_in_fan_out else torch.mm(gy.t(), x)
        if need_bias:
            grad_bias = gy.sum(0)
        return grad_x, grad_xd, grad_w, grad_bias, grad_a, grad_b, None, None


class LoraLinear(nn.Module):
    """A frozen Linear / Conv1D plus a trainable low-rank path:

        y = base(x) + scaling * B(A(dropout(x))),   A: (r, in), B: (out, r), scaling = alpha / r

    (alpha / sqrt(r) with rsLoRA). Dropout touches only the adapter input. Two small matmuls per
    call (`_LoraFunction`, which reads base.weight / base.bias directly: base's own forward and
    its hooks run only while merged); B @ A is never materialized except by `merge`, which folds
    it into `base.weight` so that forward is just `base(x)` (adapters get no gradient while
    merged). Conv1D (GPT-2) stores its weight as (in, out); A and B keep the Linear layout either
    way, as peft's files do.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 init: str = "kaiming", rslora: bool = False):
        super().__init__()
        if not isinstance(base, LINEAR_TYPES):
            raise ValueError(f"base={type(base).__name__}: LoRA wraps nn.Linear or transformers Conv1D only")
        _check_r("r", r)
        _check_alpha("alpha", alpha)
        dropout = _check_dropout(dropout)
        _check_init(init)
        self.base = base
        self.fan_in_fan_out = isinstance(base, Conv1D)
        w = base.weight
        self.in_features, self.out_features = in_out_features(base)
        self.r, self.alpha = r, alpha
        self.scaling = lora_scaling(r, alpha, rslora)
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        # Identity, not Dropout(0): no kernel launch at all when dropout is off.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        base.requires_grad_(False)
        self.reset_lora_parameters(init)

    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "kaiming") -> None:
        """kaiming: A ~ U(+-1/sqrt(in)) (nn.Linear's default, a=sqrt(5)), B = 0. gaussian: A ~ N(0, std=1/r),
        B = 0 (peft's "gaussian"). pissa: A, B from the top-r SVD of W, base.weight := W - top-r part.
        The first two leave the output unchanged because B = 0; pissa because the residual plus
        scaling * B @ A is W again."""
        _check_init(init)
        if init == "pissa":
            return self._pissa_init()
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        else:
            nn.init.normal_(self.lora_A.weight, std=1 / self.r)
        nn.init.zeros_(self.lora_B.weight)

    @torch.no_grad()
    def _pissa_init(self) -> None:
        # PiSSA (Meng et al. 2024): train the principal subspace, freeze the residual.
        if self.r > min(self.in_features, self.out_features):
            raise ValueError(f"r={self.r}: pissa needs r <= min(in, out) = "
                             f"{min(self.in_features, self.out_features)}")
        W = self.base.weight.float()
        W = W.T if self.fan_in_fan_out else W  # (out, in)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        # sqrt(S_r / scaling) on each side, so scaling * B @ A == U_r diag(S_r) Vh_r exactly.
        root = (S[: self.r] / self.scaling).sqrt()
        self.lora_A.weight.copy_(root[:, None] * Vh[: self.r])  # (r, in)
        self.lora_B.weight.copy_(U[:, : self.r] * root)  # (out, r)
        # Residual from the A, B actually stored (possibly bf16), so W_res + delta == W up to one rounding.
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        # The starting factors, kept so a saved adapter can be a plain LoRA delta on the *original* W
        # (harness.adapters: W_res + s B A = W + s [B, -B0] [A; A0]). Not persistent: they are a
        # function of W alone, recomputed whenever pissa is applied to the same base (resume, load).
        self.register_buffer("pissa_A0", self.lora_A.weight.detach().clone(), persistent=False)
        self.register_buffer("pissa_B0", self.lora_B.weight.detach().clone(), persistent=False)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A in fp32, laid out like base.weight ((in, out) for Conv1D)."""
        delta = self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        xd = self.dropout(x)  # Identity (the same tensor) when dropout is 0: no kernel at all
        same = xd is x
        w, bias, a, b = self.base.weight, self.base.bias, self.lora_A.weight, self.lora_B.weight
        if torch.is_autocast_enabled(x.device.type):
            # Cast here, where autograd sees it, so the Function's backward runs in one dtype.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w, a, b = (t.to(dtype) for t in (x, w, a, b))
            xd = x if same else xd.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        flat = x.reshape(-1, self.in_features)
        flat_d = None if same else xd.reshape(-1, self.in_features)
        y = _LoraFunction.apply(flat, flat_d, w, bias, a, b, self.scaling, self.fan_in_fan_out)
        return y.view(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def merge(self) -> None:
        """base.weight += scaling * B @ A, summed in fp32 and cast back once. No-op + warning if merged."""
        if self.merged:
            warnings.warn("LoraLinear.merge: already merged; nothing done", stacklevel=2)
            return
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """base.weight -= scaling * B @ A (fp32; exact restore for fp32 weights up to float rounding,
        one bf16/fp16 rounding otherwise). No-op + warning if not merged."""
        if not self.merged:
            warnings.warn("LoraLinear.unmerge: not merged; nothing done", stacklevel=2)
            return
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, merged={self.merged}"


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of every nn.Linear / Conv1D in the model (the candidates for LoRA)."""
    return [n for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES) and n]


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """{module name: LoraLinear} in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLinear) for m in model.modules())


def match_modules_to_save(model: nn.Module, modules_to_save) -> list[str]:
    """Names of the modules (any type) that `modules_to_save` entries name by exact name or suffix.
    Nested hits collapse to the outermost module. An entry that matches nothing is a ValueError."""
    names = [n for n, _ in model.named_modules() if n]
    hits = []
    for entry in modules_to_save:
        found = [n for n in names if name_matches(n, entry, regex=False)]
        if not found:
            children = dict.fromkeys(n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit())
            raise ValueError(f"modules_to_save entry {entry!r} matches no module; module names end in: "
                             f"{', '.join(children)}")
        hits += found
    return sorted(n for n in set(hits) if not any(n.startswith(h + ".") for h in hits))


def _output_head_names(model: nn.Module) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {n for n, m in model.named_modules() if head is not None and m is head}


def resolve_target_modules(target_modules, model: nn.Module):
    """"query+value" -> this model family's names (`QUERY_VALUE_TARGETS[model.config.model_type]`);
    anything else is returned as given. A family without an entry is a ValueError that lists the
    model's Linear/Conv1D name suffixes, so the user can name the targets."""
    if target_modules != QUERY_VALUE:
        return target_modules
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in QUERY_VALUE_TARGETS:
        raise ValueError(f"target_modules={QUERY_VALUE!r} is invalid: no query/value names known for model_type "
                         f"{model_type!r}; name them (target_modules=[...]) from the model's Linear/Conv1D "
                         f"modules, whose names end in: {', '.join(linear_suffixes(model))}")
    return QUERY_VALUE_TARGETS[model_type]


def linear_suffixes(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's Linear/Conv1D modules, in model order
    (q_proj, k_proj, ..., lm_head): what target_modules can name, without 200 full paths."""
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linear_module_names(model)))


def plan_lora(model: nn.Module, cfg: LoraConfig) -> dict[str, tuple[int, float]]:
    """{module name: (r, alpha)} that `apply_lora` would adapt, without touching the model.

    Modules inside modules_to_save are never adapted (they are trained fully instead).
    """
    if has_lora(model):
        raise ValueError("model already has LoRA layers; unload_lora(model) first or start from a fresh base model")
    linear = linear_module_names(model)
    saved = match_modules_to_save(model, cfg.modules_to_save)

    def inside_saved(n):
        return any(n == s or n.startswith(s + ".") for s in saved)

    targets = resolve_target_modules(cfg.target_modules, model)
    if targets == ALL_LINEAR:
        heads = _output_head_names(model)
        chosen = [n for n in linear if n not in heads and not set(n.split(".")) & set(HEAD_NAMES)]
    elif isinstance(targets, str):
        chosen = [n for n in linear if re.fullmatch(targets, n)]
    else:
        chosen = [n for n in linear if any(name_matches(n, t, regex=False) for t in targets)]
    chosen = [n for n in chosen if not inside_saved(n)]
    if not chosen:
        shown = list(targets) if isinstance(targets, tuple) else targets
        raise ValueError(f"target_modules={shown!r} matches none of the model's Linear/Conv1D modules "
                         f"(outside modules_to_save={list(cfg.modules_to_save)}); their names end in: "
                         f"{', '.join(linear_suffixes(model))}")
    for what, patterns in (("rank_pattern", cfg.rank_pattern), ("alpha_pattern", cfg.alpha_pattern)):
        for p in patterns:
            if not any(name_matches(n, p) for n in chosen):
                adapted = ", ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in chosen))
                raise ValueError(f"{what} key {p!r} matches no adapted module; adapted module names end in: "
                                 f"{adapted}")
    return {n: cfg.rank_alpha(n) for n in chosen}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, cfg: LoraConfig | None = None, **settings) -> list[str]:
    """Wrap the matching Linear/Conv1D modules of `model` in LoraLinear, in place, as `cfg` says
    (or a LoraConfig built from keyword `settings`: r=8, alpha=16, ...).

    Freezes every parameter, then unfreezes the adapters and the `modules_to_save` modules (e.g. a
    classification head). Stores the config as `model.lora_config`, with "query+value" resolved to
    the family's names (so a saved adapter_config.json names real modules). Returns the adapted
    names, sorted.
    """
    cfg = cfg if cfg is not None else LoraConfig(**settings)
    cfg = replace(cfg, target_modules=resolve_target_modules(cfg.target_modules, model))
    plan = plan_lora(model, cfg)
    model.requires_grad_(False)
    for name, (r_i, alpha_i) in plan.items():
        base = model.get_submodule(name)
        _set_submodule(model, name, LoraLinear(base, r_i, alpha_i, cfg.dropout, cfg.init, cfg.rslora))
    for name in match_modules_to_save(model, cfg.modules_to_save):
        model.get_submodule(name).requires_grad_(True)
    model.lora_config = cfg
    return sorted(plan)


def merge_lora(model: nn.Module) -> None:
    """Merge every LoraLinear (see LoraLinear.merge)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Unmerge every LoraLinear (see LoraLinear.unmerge)."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def unload_lora(model: nn.Module) -> nn.Module:
    """Merge the adapters and put each base layer back: a plain model whose state_dict (and
    save_pretrained output) has no LoRA keys. Parameters keep their requires_grad flags."""
    for name, layer in lora_layers(model).items():
        if not layer.merged:
            layer.merge()
        if not name:  # the model itself is one LoraLinear
            return layer.base
        _set_submodule(model, name, layer.base)
    if "lora_config" in vars(model):
        del model.lora_config
    return model


def count_parameters(model: nn.Module) -> dict:
    """trainable / total parameter counts (shared tensors once), split into `adapter` (lora_A,
    lora_B) and `head` (trainable parameters outside adapters: modules_to_save, or everything for
    full fine-tuning). The LoRA paper's counts are `adapter`."""
    adapter_ids = {id(p) for layer in lora_layers(model).values()
                   for p in (layer.lora_A.weight, layer.lora_B.weight)}
    total = trainable = adapter = head = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        adapter += n if id(p) in adapter_ids else 0
        if p.requires_grad:
            trainable += n
            head += 0 if id(p) in adapter_ids else n
    pct = 100.0 * trainable / total if total else 0.0
    return {"trainable": trainable, "total": total, "trainable_pct": pct, "adapter": adapter, "head": head}


def trainable_state_bytes(model: nn.Module, optimizer_slots: int = 2) -> dict:
    """Bytes of training state: all parameters, gradients of trainable ones, and optimizer slots
    (AdamW: 2 moments) assumed fp32 (4 bytes) per trainable element, as in mixed-precision training."""
    if isinstance(optimizer_slots, bool) or not isinstance(optimizer_slots, int) or optimizer_slots < 0:
        raise ValueError(f"optimizer_slots={optimizer_slots!r}: must be a non-negative integer")
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    optimizer_bytes = optimizer_slots * 4 * sum(p.numel() for p in params if p.requires_grad)
    return {"param_bytes": param_bytes, "grad_bytes": grad_bytes, "optimizer_bytes": optimizer_bytes,
            "state_bytes": param_bytes + grad_bytes + optimizer_bytes}
