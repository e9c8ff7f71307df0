"""LoraConfig: every bad value is one line naming it, and the "query+value" table matches real architectures."""

import pytest
import torch

from harness.lora import QUERY_VALUE_TARGETS, LoraConfig, linear_suffixes
from harness.schema import ConfigError


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "r=0"), ({"r": -2}, "r=-2"), ({"r": 2.5}, "r=2.5"),
    ({"alpha": 0}, "alpha=0"), ({"alpha": -1.0}, "alpha=-1.0"),
    ({"dropout": 1.0}, r"dropout=1.0.*\[0, 1\)"), ({"dropout": -0.1}, "dropout=-0.1"),
    ({"init": "xavier"}, r"init='xavier'.*kaiming.*gaussian.*pissa"),
    ({"target_modules": []}, "target_modules"), ({"target_modules": "("}, "not a valid regular expression"),
    ({"rank_pattern": {"query": 0}}, r"rank_pattern\['query'\]=0"),
    ({"alpha_pattern": {"query": -3}}, r"alpha_pattern\['query'\]=-3"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "r=0 is invalid: must be a positive integer"),
    ({"alpha": "abc"}, "alpha='abc' is invalid: must be a positive number"),
    ({"dropout": 1.0}, "dropout=1.0 is invalid: must be a number in [0, 1)"),
    ({"init": "xavier"}, "init='xavier' is invalid: choose kaiming, gaussian, pissa or olora"),
    ({"target_modules": ""}, "target_modules='' is invalid: give module names ([query,value]), one regex, "
                             "all-linear or query+value"),
    ({"target_modules": []}, "target_modules=[] is invalid: give module names ([query,value]), one regex, "
                             "all-linear or query+value"),
    ({"target_modules": "("}, "target_modules='(' is invalid: not a valid regular expression "
                              "(missing ), unterminated subpattern at position 0)"),
    ({"rank_pattern": {"query": 0}}, "rank_pattern['query']=0 is invalid: must be a positive integer"),
    ({"use_dora": "yes"}, "use_dora='yes' is invalid: must be true or false"),
    ({"freeze_a": 1}, "freeze_a=1 is invalid: must be true or false"),
    ({"freeze_a": True, "init": "olora"}, "freeze_a=True is invalid: LoRA-FA freezes a random A; init=olora sets "
                                          "A from W, use kaiming or gaussian"),
])
def test_bad_values_are_one_line_config_errors(kwargs, message):
    """The one error style of harness.schema: `key=value is invalid: what is allowed`, as a ConfigError,
    so a bad method.* override and a bad adapter_config.json read the same."""
    with pytest.raises(ConfigError) as e:
        LoraConfig(**kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("model_type", sorted(QUERY_VALUE_TARGETS))
def test_every_family_default_names_attention_layers_of_that_architecture(model_type):
    """Each family's q/v names exist in the real transformers architecture (built on the meta device:
    no memory, no weights), so the table cannot drift from the models' module names."""
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModel

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers {__import__('transformers').__version__} has no {model_type}")
    config = AutoConfig.for_model(model_type)
    for key in ("num_hidden_layers", "num_layers", "n_layer", "num_decoder_layers"):
        if hasattr(config, key):
            setattr(config, key, 1)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    suffixes = linear_suffixes(model)
    targets = QUERY_VALUE_TARGETS[model_type]
    assert set(targets) <= set(suffixes), (model_type, suffixes)
    assert any(t.startswith(("q", "Wqkv", "c_attn", "in_proj")) for t in targets)  # attention, not MLP
