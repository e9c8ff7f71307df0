"""run_name: the W&B run name, read like a table row."""
import pytest
from omegaconf import OmegaConf

from harness.telemetry import run_name


@pytest.mark.parametrize("method, seed, expected", [
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "value"]}, 0, "lora-r8-a16-qv-seed0"),
    ({"name": "lora", "r": 4, "alpha": 8.0, "target_modules": ["value", "query", "key", "dense"]}, 2,
     "lora-r4-a8-qkvo-seed2"),
    ({"name": "lora", "r": 16, "alpha": 0.5, "target_modules": ["q_proj", "o_proj", "gate_proj", "up_proj"]}, 1,
     "lora-r16-a0.5-qo+gate_proj+up_proj-seed1"),
    ({"name": "lora", "r": 2, "alpha": 4, "target_modules": ["out_proj"]}, 0, "lora-r2-a4-o-seed0"),
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"}, 0, "lora-r8-a16-all-seed0"),
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": ["intermediate"]}, 0, "lora-r8-a16-intermediate-seed0"),
    ({"name": "full", "lr": 2e-5}, 3, "full-seed3"),
    # the LoRA family: one name per variant at equal r / alpha / targets
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": "query+value", "use_dora": True}, 0,
     "lora-r8-a16-qv-dora-seed0"),
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": "query+value", "init": "olora"}, 1,
     "lora-r8-a16-qv-olora-seed1"),
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": "query+value", "freeze_a": True, "lr_ratio": 1}, 0,
     "lora-r8-a16-qv-fa-seed0"),
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": "query+value", "init": "kaiming", "lr_ratio": 16.0}, 0,
     "lora-r8-a16-qv-lrr16-seed0"),
])
def test_run_name(method, seed, expected):
    assert run_name(method, seed) == expected
    assert run_name(OmegaConf.create(method), seed) == expected


def test_run_name_with_lr_and_bad_method():
    assert run_name({"name": "full", "lr": 5e-4}, 0, include_lr=True) == "full-lr0.0005-seed0"
    with pytest.raises(ValueError, match=r"method.name must be one of \('lora', 'full'\), got 'ia3'"):
        run_name({"name": "ia3"}, 0)
    with pytest.raises(ValueError, match="needs r and alpha"):
        run_name({"name": "lora", "alpha": 16}, 0)
