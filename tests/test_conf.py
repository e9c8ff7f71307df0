"""The files in conf/: each experiment regenerates its committed study, the GLUE tasks compose to
the settings they always had, and the paths, debug and launcher presets say what they claim.
(Every group validating: tests/test_config.py; bad values: tests/test_bad_input.py.)"""

import itertools
import json

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from harness.config import validate
from tests.helpers import CONF, ROOT, compose, task_preset

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# Keys added to the config tree after the studies ran, with the value that means what the studies
# ran with (anything else would change the study, and fails the test below).
ADDED_SINCE = {"model.dropout": None,  # null: the checkpoint's own dropout, as before model.dropout existed
               "model.attn_implementation": None,  # null: transformers' default (sdpa) for these fp32 CPU studies
               "model.cache_dir": None, "task.cache_dir": None,  # the default cache root
               "trainer.select_best": False, "trainer.restart": False,
               "paths.output_dir": "outputs", "paths.cache_dir": None,
               # the LoRA family, off: plain LoRA as it ran before the keys existed
               "method.use_dora": False, "method.freeze_a": False, "method.lr_ratio": None}
# Spelled differently today, meaning the same on MiniLM (a BERT): {key: {today: as recorded}}.
RESPELLED = {"method.target_modules": {"query+value": ["query", "value"]},  # harness.lora QUERY_VALUE_TARGETS["bert"]
             "method.rank_pattern": {None: {}}, "method.alpha_pattern": {None: {}},
             # before trainer.precision=auto, bf16 meant bf16 autocast on CUDA only: a CPU run recorded
             # as bf16 ran fp32 (checked below: only on records whose device is the CPU)
             "trainer.precision": {"fp32": "bf16"}}


def flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value and key not in ("rank_pattern", "alpha_pattern"):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def experiment_jobs(experiment: str) -> list[list[str]]:
    """Every job's overrides, as the basic sweeper makes them from hydra.sweeper.params."""
    params = OmegaConf.to_container(compose(f"experiment={experiment}", hydra=True).hydra.sweeper.params)
    return [list(job) for job in itertools.product(*[[f"{k}={v}" for v in str(vals).split(",")]
                                                      for k, vals in params.items()])]


# Studies whose committed records include jobs another study ran with exactly the same config
# (lora_family's full and lora jobs are lora_vs_full's; experiments/lora_family/README.md).
REUSED = {"lora_family": ("lora_vs_full",)}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_alone_regenerates_every_job_of_its_committed_study(experiment):
    """`harness-train experiment=<study>` with nothing else: a multirun whose jobs have exactly the
    configs in experiments/<study>/results/*/results.json, key by key."""
    assert str(compose(f"experiment={experiment}", hydra=True).hydra.mode) == "RunMode.MULTIRUN"
    records = {}
    for path in sorted((ROOT / "experiments" / experiment / "results").glob("*/results.json")):
        record = json.loads(path.read_text())
        # what made the job: its sweep values, as overrides (older runs spelled `+placement=`)
        records[frozenset(o.lstrip("+") for o in record["sweep"]["overrides"])] = record
    jobs = experiment_jobs(experiment)
    assert len(jobs) == len(records) > 0
    for job in jobs:
        (key,) = [k for k in records if set(job) <= k]
        record = records[key]
        recorded = flat(record["config"])
        if any(o.startswith("sweep_name=") for o in key):  # three target_modules jobs ran as their own
            recorded["sweep_name"] = experiment            # sweep (experiments/target_modules/README.md)
        if recorded["sweep_name"] in REUSED.get(experiment, ()):  # the same job, run by another study
            recorded["sweep_name"] = experiment
        composed = flat(OmegaConf.to_container(compose(f"experiment={experiment}", *job), resolve=True))
        for name, value in composed.items():
            # run control (skip completed jobs; where run folders are written), not what a job computes
            if name in ("resume", "paths.output_dir"):
                continue
            if name not in recorded:
                assert name in ADDED_SINCE and value == ADDED_SINCE[name], (job, name, value)
                continue
            old_spelling = RESPELLED.get(name, {}).get(value if not isinstance(value, list) else None, value)
            assert recorded[name] in (value, old_spelling), (job, name, value, recorded[name])
            if name == "trainer.precision" and recorded[name] != value:
                assert record["device"] == "cpu", (job, record["device"])
        assert set(recorded) <= set(composed), (job, set(recorded) - set(composed))


def test_experiments_need_no_plus_and_pin_their_model_and_task_over_the_command_line_groups():
    cfg = compose("experiment=rank_ablation", "method.r=4", "scaling=fixed_scale", "seed=1")
    assert (cfg.model.name, cfg.task.name, cfg.method.alpha, cfg.trainer.max_steps) == ("minilm", "rotten_tomatoes", 8, None)
    assert compose("experiment=lora_vs_full", "model=roberta_base").model.name == "roberta_base"  # the command line wins
    assert compose("experiment=rank_ablation", "debug=tiny").task.limit_train == 96  # debug shrinks an experiment
    hp = compose("hparams_search=lora_lr", hydra=True)
    assert str(hp.hydra.mode) == "RunMode.MULTIRUN" and hp.hydra.runtime.choices["hydra/sweeper"] == "optuna"


# The eight GLUE tasks extend conf/task/_glue.yaml; composed, each is exactly what its file said before.
GLUE_SHARED = {"kind": "classification", "source": "hub", "path": "nyu-mll/glue", "revision": None,
               "splits": {"train": "train", "eval": "validation", "test": None}, "label_column": "label",
               "num_labels": 2, "metrics": ["accuracy"], "main_metric": "accuracy", "greater_is_better": True,
               "max_length": 128, "limit_train": None, "limit_eval": None, "group_by_length": True, "cache_dir": None}
GLUE_OWN = {
    "cola": {"text_columns": ["sentence"], "metrics": ["matthews_correlation", "accuracy"],
             "main_metric": "matthews_correlation"},
    "mnli": {"text_columns": ["premise", "hypothesis"], "num_labels": 3, "max_length": 256,
             "splits": {"train": "train", "eval": "validation_matched", "test": None}},
    "mrpc": {"text_columns": ["sentence1", "sentence2"], "metrics": ["accuracy", "f1"]},
    "qnli": {"text_columns": ["question", "sentence"], "max_length": 256},
    "qqp": {"text_columns": ["question1", "question2"], "metrics": ["accuracy", "f1"]},
    "rte": {"text_columns": ["sentence1", "sentence2"], "max_length": 256},
    "sst2": {"text_columns": ["sentence"]},
    "stsb": {"text_columns": ["sentence1", "sentence2"], "kind": "regression", "num_labels": 1,
             "metrics": ["pearsonr", "spearmanr"], "main_metric": "pearsonr"},
}


@pytest.mark.parametrize("task", sorted(GLUE_OWN))
def test_glue_task_composes_to_its_settings(task):
    assert task_preset(task) == {**GLUE_SHARED, "name": task, "subset": task, **GLUE_OWN[task]}
    assert "defaults:\n  - _glue\n" in (CONF / "task" / f"{task}.yaml").read_text()


def test_paths_group_places_runs_sweeps_and_caches():
    cfg = compose("paths.output_dir=/data/out", "paths.cache_dir=/data/cache", "sweep_name=s", hydra=True)
    HydraConfig.instance().set_config(cfg)  # what ${hydra:job.override_dirname} reads
    assert cfg.hydra.run.dir == "/data/out/runs/minilm/rotten_tomatoes/default"  # paths.* never name the folder
    assert cfg.hydra.sweep.dir == "/data/out/sweeps/s"
    assert (cfg.task.cache_dir, cfg.model.cache_dir) == ("/data/cache", "/data/cache")
    assert compose("paths.cache_dir=/a", "task.cache_dir=/b").task.cache_dir == "/b"  # one alone still works
    default = compose(hydra=True)
    HydraConfig.instance().set_config(default)
    assert default.hydra.run.dir.startswith("outputs/runs/") and default.paths.cache_dir is None
    validate(default)


def test_debug_tiny_is_the_cli_tests_budget():
    cfg = compose("debug=tiny")
    assert (cfg.task.limit_train, cfg.task.limit_eval, cfg.trainer.batch_size, cfg.trainer.eval_batch_size) == (96, 32, 8, 32)
    validate(compose("debug=tiny", hydra=True))


def test_launcher_presets_extend_the_plugins():
    parallel = compose("hydra/launcher=parallel", hydra=True).hydra.launcher
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2
    slurm = compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", hydra=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.account, slurm.gpus_per_node, slurm.timeout_min) == ("gpu", None, 1, 120)
