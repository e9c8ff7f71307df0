"""Every documented command works as typed: each `harness-train`, `harness-table` and
`harness-report` line in a code block of README.md or experiments/*/README.md is one test.

- harness-train runs for real, through the CLI, on a tiny budget: the tiny BERT (or the tiny Llama for
  a causal-LM model) stands in for the model, `debug=tiny` (conf/debug/tiny.yaml) and one or two
  steps; keys the command sets itself (trainer.max_steps=200) get the tiny value instead. A command
  is a multirun when it says -m or its config sets hydra.mode: MULTIRUN (every experiment does). A sweep of more than MAX_REAL_JOBS jobs,
  or one on another launcher (joblib, submitit), is composed job by job with Hydra's compose API and
  validated instead, as is a command that needs the network (a hub model or data set, W&B online,
  Slurm): every job's config must pass `validate`, the check a real run starts with.
- harness-table / harness-report run in-process on the studies' committed sweeps
  (experiments/<study>/results) laid out where the commands look (outputs/sweeps/<sweep_name>);
  `--wandb` reads the fixture sweep through a stand-in for wandb.Api.

A command in the docs that fails is a failing test here: fix the docs or the code.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from harness import report as R
from harness import table as T
from harness.config import ModelConfig, validate
from harness.overrides import check_overrides
from harness.schema import typed
from tests.helpers import ROOT, cli_env, missing_package

pytestmark = pytest.mark.slow

DOCS = [ROOT / "README.md", *sorted((ROOT / "experiments").glob("*/README.md"))]
TOOLS = ("harness-train", "harness-table", "harness-report")
MAX_REAL_JOBS = 9  # larger sweeps are validated job by job: each real job costs ~1-2 s here
SLOW_LAUNCHERS = ("joblib", "parallel", "submitit_local", "submitit_slurm", "slurm")  # tests/test_sweep.py runs the local ones


def _keys(node: dict, prefix: str = "") -> set[str]:
    return {k for key, v in node.items()
            for k in (_keys(v, f"{prefix}{key}.") if isinstance(v, dict) else {f"{prefix}{key}"})}


# What debug=tiny sets: a command's own values for these keys give way to it.
DEBUG_KEYS = _keys(OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "debug" / "tiny.yaml")))


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a fenced (```) or indented (4 spaces) code block."""
    out, fenced, previous_blank = [], False, True
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or (line.startswith("    ") and (previous_blank or (out and out[-1][0] == number - 1))):
            out.append((number, line.strip()))
        previous_blank = not line.strip()
    return out


def doc_commands() -> list:
    """pytest params: (argv, where) for each documented command; `a && b` gives each part."""
    params = []
    for doc in DOCS:
        for number, line in code_lines(doc.read_text()):
            if not any(tool in line for tool in TOOLS):
                continue
            tokens = shlex.split(line, comments=True)  # a shell comment may hold any text
            parts = [list(g) for is_and, g in itertools.groupby(tokens, lambda t: t == "&&") if not is_and]
            for argv in parts:
                if argv and Path(argv[0]).name in TOOLS:
                    where = f"{doc.relative_to(ROOT)}:{number}"
                    params.append(pytest.param([Path(argv[0]).name, *argv[1:]], where, id=f"{where} {' '.join(argv)}"))
    return params


COMMANDS = doc_commands()


def test_the_docs_have_the_commands_this_test_is_meant_for():
    names = [p.values[0][0] for p in COMMANDS]
    assert names.count("harness-train") >= 15 and "harness-table" in names and "harness-report" in names
    assert ["harness-train", "model=smollm2_135m", "task=chatterbot"] in [p.values[0] for p in COMMANDS]


# ----------------------------------------------------------------------------- harness-train


def compose_job(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def first_job(overrides: list[str]):
    """The config of a command's first job (each sweep at its first value)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return compose_job([o.input_line if not o.is_sweep_override() or not o.is_discrete_sweep() else
                        f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" for o in parsed
                        if o.is_discrete_sweep() or not o.is_sweep_override()])


def is_multirun(args: list[str]) -> bool:
    """-m on the command line, or hydra.mode: MULTIRUN in the config it composes (an experiment)."""
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    return len(overrides) < len(args) or str(first_job(overrides).hydra.mode) == "RunMode.MULTIRUN"


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """Every job's overrides, as the basic sweeper would make them (command-line sweeps plus the
    experiment's hydra.sweeper.params); None when another sweeper (Optuna) chooses the jobs."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return None  # an interval: only a sweeper that samples (Optuna) can run it
    first = first_job(overrides)
    if first.hydra.runtime.choices["hydra/sweeper"] != "basic":
        return None
    on_command_line = {o.key_or_group for o in parsed}
    params = [parser.parse_override(f"{k}={v}") for k, v in (first.hydra.sweeper.params or {}).items()
              if k not in on_command_line]
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
            else [o.input_line] for o in [*params, *parsed]]
    return [list(job) for job in itertools.product(*axes)]


def needs_network(cfg) -> str | None:
    """Why a composed job cannot run offline here, or None."""
    if typed("model", ModelConfig, cfg.model).local_folder() is None:
        return f"hub model {cfg.model.name_or_path}"
    if cfg.task.source == "hub":
        return f"hub data set {cfg.task.path}"
    if cfg.logger.name == "wandb" and cfg.logger.get("mode") == "online":
        return "W&B online"
    return None


def with_tiny_budget(overrides: list[str], cfg, model_dir: Path, llama_dir: Path, multirun: bool) -> list[str]:
    causal = cfg.task.kind == "causal_lm"
    tiny = {"debug": "tiny", "trainer.max_steps": "1" if multirun else "2",
            "model.name_or_path": str(llama_dir if causal else model_dir)}
    if cfg.model.get("gguf_file"):
        tiny["model.gguf_file"] = "null"  # the tiny Llama is a plain checkpoint
    if cfg.hydra.runtime.choices["hydra/sweeper"] == "optuna":
        tiny["hydra.sweeper.n_trials"] = "2"
    out = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+")
        if key not in DEBUG_KEYS:
            out.append(f"{key}={tiny.pop(key)}" if key in tiny else o)  # the command's own value, made tiny
    return out + [f"{k}={v}" for k, v in tiny.items()]


@pytest.mark.parametrize("argv, where", [p for p in COMMANDS if p.values[0][0] == "harness-train"])
def test_documented_train_command(argv, where, tiny_model_dir, tiny_llama_dir, tmp_path):
    args = argv[1:]
    multirun = is_multirun(args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    check_overrides(args)  # what the CLI checks before Hydra composes (unknown groups, keys, syntax)
    jobs = sweep_jobs(overrides) if multirun else [overrides]
    first = compose_job(jobs[0] if jobs else overrides)
    if missing_package(first):
        pytest.skip(f"{where}: needs the optional package {missing_package(first)} (bash install.sh --causal-lm)")
    launcher = first.hydra.runtime.choices["hydra/launcher"]
    offline = needs_network(first) is None and launcher not in SLOW_LAUNCHERS
    if jobs is not None and (not offline or len(jobs) > MAX_REAL_JOBS):
        for job in jobs:  # composed and checked as the job would start, nothing trained
            cfg = compose_job(job)
            validate(cfg)
            assert cfg.hydra.runtime.choices["hydra/launcher"] == launcher
        return
    assert offline, f"{where}: {needs_network(first) or launcher}: cannot run it here and cannot list its jobs"
    run = [f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={tmp_path / 'run'}"]
    cmd = [sys.executable, "-m", "harness.train", *[a for a in args if a in ("-m", "--multirun")],  # as documented
           *with_tiny_budget(overrides, first, tiny_model_dir, tiny_llama_dir, multirun), *run]
    env = dict(cli_env(), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{where}: {' '.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    records = sorted((tmp_path / ("sweep" if multirun else "run")).glob("**/results.json"))
    assert records and all('"status": "completed"' in p.read_text() for p in records), records
    if jobs is not None:
        assert len(records) == len(jobs)


# ----------------------------------------------------------------------------- harness-table / harness-report


def committed_sweeps() -> dict[str, Path]:
    """sweep_name -> the committed sweep folder of the study that ran it (see experiments/README.md)."""
    sweeps = {}
    for results in sorted((ROOT / "experiments").glob("**/results")):
        study = results.parent.relative_to(ROOT / "experiments")
        sweeps["_".join(study.parts)] = results  # lr_search/lora ran as sweep_name=lr_search_lora
    return sweeps


@pytest.fixture
def sweeps_cwd(tmp_path, monkeypatch):
    for name, folder in committed_sweeps().items():
        (tmp_path / "outputs" / "sweeps").mkdir(parents=True, exist_ok=True)
        (tmp_path / "outputs" / "sweeps" / name).symlink_to(folder, target_is_directory=True)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments", target_is_directory=True)  # commands that name them
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv, where", [p for p in COMMANDS if p.values[0][0] != "harness-train"])
def test_documented_table_and_report_command(argv, where, sweeps_cwd, monkeypatch, capsys):
    from tests.analysis.sweeps import FakeApi, fake_run

    args = argv[1:]
    for path in (a for a in args if a.startswith("outputs/sweeps/")):
        assert (sweeps_cwd / path).exists(), f"{where}: no committed study ran as sweep {path}"
    if "--wandb" in args:  # W&B's API stands in: the fixture sweep, as W&B run summaries
        monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Api=FakeApi))
        FakeApi.calls.clear()
        FakeApi.runs_to_return = [fake_run(r, run_id=str(i)) for i, r in
                                  enumerate(T.load_records([ROOT / "tests" / "fixtures" / "sweep_lora_vs_full"]))]
    written = None
    if "--out" in args:  # written under tmp_path, never over the committed study the path names
        at = args.index("--out") + 1
        args[at] = written = str(sweeps_cwd / "written" / args[at])
    main = T.main if argv[0] == "harness-table" else R.main
    assert main(args) == 0, f"{where}: {' '.join(argv)}\n{capsys.readouterr().err}"
    out = capsys.readouterr().out
    if argv[0] == "harness-table" and written:
        out = Path(written).read_text()
    if argv[0] == "harness-table" and "latex" in args:
        assert re.search(r"\\toprule\n.*\n\\midrule\n.+\n", out), out  # header and at least one row
    elif argv[0] == "harness-table":
        assert re.search(r"^\| .*\n\| :?-+.*\n\| .+\|\n", out, re.M), out
    else:
        out_dir = Path(args[args.index("--out") + 1])
        assert (sweeps_cwd / out_dir / "index.html").is_file()
