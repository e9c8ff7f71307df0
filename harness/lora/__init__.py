"""Low-rank adapters (LoRA, Hu et al. 2021) for nn.Linear and GPT-2's Conv1D, written without peft.

One concept a module, in the order a reader meets them:

    config.py    LoraConfig (r, alpha, targets, init, patterns) and its value checks
    function.py  the autograd Function that computes the layer with every thin GEMM laid out fast
    layer.py     LoraLinear: holds a frozen base layer, owns lora_A / lora_B, merges only when asked
    dora.py      DoraLinear: DoRA's magnitude / direction split on top of LoraLinear
    inject.py    plan / apply / merge / unload: which layers get adapters, and swapping them in place
    params.py    trainable / total parameter counts and training-state bytes (what the paper compares)
    files.py     peft's on-disk adapter format: save_adapter, read_adapter, adapter_config.json
    load.py      load_adapter: check a file fits the model, inject, copy the tensors in
    bank.py      AdapterBank: several adapters switched in place on one base

Code outside the package imports from here (`from harness.lora import apply_lora, LoraConfig`).
"""

from harness.lora.bank import AdapterBank
from harness.lora.config import (ALL_LINEAR, INITS, QUERY_VALUE, QUERY_VALUE_TARGETS, RESIDUAL_INITS, LoraConfig,
                                 lora_scaling, name_matches)
from harness.lora.dora import DoraLinear
from harness.lora.files import (CHECKSUM_KEY, CONFIG_NAME, PICKLE_NAME, PREFIX, WEIGHTS_NAME, adapter_state_dict,
                                base_model_path, lora_config_from_peft, peft_config_dict, read_adapter,
                                save_adapter, saved_modules, target_module_names)
from harness.lora.function import LoraFunction
from harness.lora.inject import (HEAD_NAMES, apply_lora, has_lora, linear_module_names, linear_suffixes,
                                 lora_layers, match_modules_to_save, merge_lora, plan_lora,
                                 resolve_target_modules, unload_lora, unmerge_lora)
from harness.lora.layer import LINEAR_TYPES, LoraLinear, in_out_features
from harness.lora.load import load_adapter
from harness.lora.params import count_parameters, trainable_state_bytes

__all__ = [
    "ALL_LINEAR", "CHECKSUM_KEY", "CONFIG_NAME", "HEAD_NAMES", "INITS", "LINEAR_TYPES", "PICKLE_NAME", "PREFIX",
    "QUERY_VALUE", "QUERY_VALUE_TARGETS", "RESIDUAL_INITS", "WEIGHTS_NAME", "AdapterBank", "DoraLinear",
    "LoraConfig", "LoraFunction",
    "LoraLinear", "adapter_state_dict", "apply_lora", "base_model_path", "count_parameters", "has_lora",
    "in_out_features", "linear_module_names", "linear_suffixes", "load_adapter", "lora_config_from_peft",
    "lora_layers", "lora_scaling", "match_modules_to_save", "merge_lora", "name_matches", "peft_config_dict",
    "plan_lora", "read_adapter", "resolve_target_modules", "save_adapter", "saved_modules",
    "target_module_names", "trainable_state_bytes", "unload_lora", "unmerge_lora",
]
