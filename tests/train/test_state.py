"""LoopState through a checkpoint's weights-only load; what MethodConfig decides trains."""

import pytest
import torch
from omegaconf import OmegaConf

from harness.config import ConfigError, MethodConfig
from harness.lora import LoraConfig
from harness.schema import typed
from harness.train import LoopState, prepare_model
from tests.helpers import ROOT


def test_loop_state_round_trips_through_a_weights_only_load(tmp_path):
    state = LoopState(step=7, best={"step": 6, "epoch": 0.5, "accuracy": 0.75}, skipped_steps=1, train_loss=0.61,
                      evals=[{"step": 6, "epoch": 0.5, "accuracy": 0.75}], timer={"total_s": 1.5, "steps": 7},
                      segments=[{"from_step": 0, "to_step": 7, "train_time_s": 1.5, "wall_time_s": 3.0,
                                 "git_commit": None}])
    state.window["loss"] += 0.6
    state.window["n"] += 1
    torch.save({"loop": state.state_dict()}, tmp_path / "state.pt")
    again = LoopState()
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True)["loop"])
    assert again == state


def test_loop_state_reads_the_loop_dict_of_an_older_checkpoint():
    """Checkpoints before the timer, segments and window were saved carried only these keys."""
    state = LoopState()
    state.load_state_dict({"step": 4, "best": None, "evals": [], "skipped_steps": 0})
    assert state == LoopState(step=4)


def _method(**overrides) -> MethodConfig:
    node = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "method" / "lora.yaml"), overrides)
    return typed("method", MethodConfig, node)


def test_method_config_holds_one_lora_config_built_in_the_typed_check():
    method = _method(r=4, target_modules=["query", "key"], rank_pattern={"query": 2})
    assert method.lora == LoraConfig(r=4, alpha=16, target_modules=("query", "key"), rank_pattern={"query": 2})
    assert method.with_head_modules(["classifier", "pooler"]).lora.modules_to_save == ("classifier", "pooler")
    given = _method(modules_to_save="classifier").with_head_modules(["pooler"])
    assert given.lora.modules_to_save == ("classifier",)  # set in the method config: the model's heads don't apply
    assert _method(name="full").lora is None
    with pytest.raises(ConfigError, match=r"^method\.r=0 is invalid"):
        _method(r=0)


def test_prepare_model_trains_what_the_method_config_says(tiny_bert):
    cfg = OmegaConf.create({"model": {"head_modules": ["classifier"]}})
    adapted = prepare_model(cfg, _method(r=2, target_modules=["query"]), tiny_bert)
    assert adapted == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.query"]
    trainable = {n for n, p in tiny_bert.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.{ab}.weight" for name in adapted for ab in ("lora_A", "lora_B")} | {
        "classifier.weight", "classifier.bias"}
    with pytest.raises(ConfigError, match=r"^method\."):  # a target this model does not have
        prepare_model(cfg, _method(target_modules=["nope"]), torch.nn.Sequential(torch.nn.Linear(2, 2)))
