"""Bad input, all of it: every bad value fails with one line naming the key, the value and what is
allowed, before anything heavy loads.

BAD is the table, one row per bad command line, across every group. Each row is checked in-process
through the same steps a run takes before training (harness.config.check_overrides, Hydra's compose,
validate, then the tokenizer, the data and the model for values only those can refute), and must
fail at the first step that can know, with a one-line message that matches the row's pattern.
CLI picks rows that also run through the real `python -m harness.train`: non-zero exit within
seconds, that one line on the console, no traceback there (the full one in the job log), and a
completed results.json already in the run folder left untouched.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir

from harness.config import validate
from harness.overrides import check_overrides
from harness.models import load_model, load_tokenizer
from harness.data import build_task
from harness.train import job_run_name, prepare_model
from tests.helpers import ROOT, cli_env

CHOICES_MODEL = "minilm, roberta_base or smollm2_135m"
TRAINER_INT = ["batch_size", "grad_accum", "eval_batch_size", "log_every", "keep_checkpoints"]

# (the overrides as typed in a shell, the pattern the one line must match). {csv} is a folder of small
# data files (see `csv_dir`); every row runs on the tiny BERT with a few examples. Patterns anchored
# with ^ are what harness-train rejects before Hydra runs (check_overrides); the rest fail in
# validate, except the rows of DATA (the data set refutes them) and MODEL (the model does).
BAD = [
    # method
    ("method.r=0", r"method\.r=0 is invalid: must be a positive integer"),
    ("method.r=2.5", r"method\.r=2\.5 is invalid: must be an integer"),
    ("method.r=eight", r"method\.r='eight' is invalid: must be an integer"),
    ("method.alpha=abc", r"method\.alpha='abc' is invalid: must be a number"),
    ("method.alpha=-2", r"method\.alpha=-2\.0 is invalid: must be a positive number"),
    ("method.dropout=1.5", r"method\.dropout=1\.5 is invalid: must be a number in \[0, 1\)"),
    ("method.dropout=high", r"method\.dropout='high' is invalid: must be a number"),
    ("method.init=xavier", r"method\.init='xavier' is invalid: choose kaiming, gaussian, pissa or olora"),
    ("method.target_modules=[]", r"method\.target_modules=\[\] is invalid: give module names \(\[query,value\]\), "
                                 r"one regex, all-linear or query\+value"),
    ("\"method.target_modules='q(('\"", r"method\.target_modules='q\(\(' is invalid: not a valid regular "
                                         r"expression"),
    ("method.target_modules=[q_proj]", r"method\.target_modules=\['q_proj'\] matches none of the model's "
                                       r"Linear/Conv1D modules .*; their names end in: query, key, value, dense, "
                                       r"classifier$"),
    ("method.lr=0", r"method\.lr=0\.0 is invalid: must be > 0"),
    ("method.lr=fast", r"method\.lr='fast' is invalid: must be a number"),
    ("method.rank_pattern={query:0}", r"method\.rank_pattern\['query'\]=0 is invalid: must be a positive integer"),
    ("method.rank_pattern=4", r"method\.rank_pattern=4 is invalid: must be a mapping, e\.g\. \{a:1\} or null"),
    ("method.rank_pattern={key:4}", r"method\.rank_pattern key 'key' matches no adapted module; adapted module "
                                    r"names end in: query, value$"),
    ("method.alpha_pattern={value:-1}", r"method\.alpha_pattern\['value'\]=-1 is invalid: must be a positive number"),
    ("method.modules_to_save=5", r"method\.modules_to_save=5 is invalid: give module names"),
    ("method.modules_to_save=[head]", r"method\.modules_to_save entry 'head' matches no module; module names "
                                      r"end in: bert, embeddings, word_embeddings, .*, pooler, activation, "
                                      r"classifier$"),
    ("method.rslora=maybe", r"method\.rslora='maybe' is invalid: must be true or false"),
    ("method.use_dora=maybe", r"method\.use_dora='maybe' is invalid: must be true or false"),
    ("method.lr_ratio=0", r"method\.lr_ratio=0\.0 is invalid: must be > 0 \(B's learning rate over A's, e\.g\. 16\), "
                          r"or null for off"),
    ("method=lora_fa method.init=pissa", r"method\.freeze_a=True is invalid: LoRA-FA freezes a random A; init=pissa "
                                         r"sets A from W, use kaiming or gaussian"),
    ("method=full +method.lr_ratio=16", r"method\.lr_ratio=16\.0 is invalid: a LoRA setting; method\.name=full "
                                        r"trains every weight \(leave it null\)"),
    ("method.name=adapter", r"method\.name='adapter' is invalid: choose lora or full"),
    ("method=adapter", r"^method=adapter is invalid: choose dora, full, lora, lora_all_linear, lora_fa, lora_plus "
                       r"or olora$"),
    ("+method.foo=1", r"method\.foo=1 is invalid: not a method setting; settings: name, lr, r, alpha"),
    # model
    ("model.dtype=float7", r"model\.dtype='float7' is invalid: choose float32, bfloat16 or float16"),
    ("model.dropout=1.0", r"model\.dropout=1\.0 is invalid: a probability in \[0, 1\), or null"),
    ("model.dropout=high", r"model\.dropout='high' is invalid: must be a number or null"),
    ("model.attn_implementation=fast", r"model\.attn_implementation='fast' is invalid: choose null \(automatic\), eager, sdpa, "
                                       r"flash_attention_2, flex_attention"),
    ("model.name_or_path=/no/such/dir", r"model\.name_or_path='/no/such/dir' is invalid: no such folder"),
    ("model.name_or_path=pkg:no_such_pkg/model", r"model\.name_or_path='pkg:no_such_pkg/model' is invalid: "
                                                 r"Python package 'no_such_pkg' is not installed"),
    ("model.name_or_path=bad::name", r"model\.name_or_path='bad::name' is invalid: a local folder, "
                                      r"pkg:MODULE/SUBDIR .*, or a hub name \(owner/name\)"),
    ("model.name=a/b", r"model\.name='a/b' is invalid: a plain name"),
    ("model.gguf_file=weights.bin", r"model\.gguf_file='weights\.bin' is invalid: a \.gguf file name"),
    ("model.gguf_file=missing.gguf", r"model\.gguf_file='missing\.gguf' is invalid: no such file in .*; "
                                     r"GGUF files there: \[\]"),
    ("model.config_overrides={hidden_dropout:0}", r"model\.config_overrides\.hidden_dropout=0 is invalid: not a "
                                                  r"field of BertConfig; its fields: .*hidden_dropout_prob"),
    ("model.config_overrides=5", r"model\.config_overrides=5 is invalid: must be a mapping"),
    ("model.head_modules=classifier", r"model\.head_modules='classifier' is invalid: must be a list"),
    ("model.trust_remote_code=maybe", r"model\.trust_remote_code='maybe' is invalid: must be true or false"),
    ("model=nope", rf"^model=nope is invalid: choose {CHOICES_MODEL}$"),
    ("+model.revision=main", r"model\.revision='main' is invalid: not a model setting; settings: name, "),
    # task
    ("task=nope", r"^task=nope is invalid: choose bbc_news, .*rotten_tomatoes, .*stsb$"),
    ("task.max_length=1", r"task\.max_length=1 is invalid: must be >= 2"),
    ("task.max_length=long", r"task\.max_length='long' is invalid: must be an integer"),
    ("task.limit_train=0", r"task\.limit_train=0 is invalid: must be >= 1 or null"),
    ("task.limit_eval=-3", r"task\.limit_eval=-3 is invalid: must be >= 1 or null"),
    ("task.metrics=[bleu]", r"task\.metrics=\['bleu'\] is invalid: unknown metrics \['bleu'\]; available: "
                            r"\['accuracy', 'f1'"),
    ("task.metrics=[accuracy] task.main_metric=f1", r"task\.main_metric='f1' is invalid: choose one of "
                                                    r"\['loss', 'accuracy'\]"),
    ("+task.metric_kwargs={bleu:{}}", r"task\.metric_kwargs=\{'bleu': \{\}\} is invalid: keys \['bleu'\] are not "
                                      r"in task\.metrics"),
    ("task.kind=ranking", r"task\.kind='ranking' is invalid: choose one of classification, regression, causal_lm"),
    ("task=chatterbot task.forget.files=[macbeth]", r"task\.forget\.files=\['macbeth'\] is invalid: a list of "
                                                   r"distinct names among hamlet, convention_2012"),
    ("task=chatterbot task.forget.max_length=long", r"task\.forget\.max_length='long' is invalid: must be an integer"),
    ("task=chatterbot +task.forget.chunks=4", r"task\.forget\.chunks=4 is invalid: not a task\.forget setting; "
                                              r"settings: source, files, split"),
    ("+task.forget={limit:4}", r"task\.forget=\{'limit': 4\} is invalid: the forgetting probe scores a causal LM"),
    ("task.num_labels=1", r"task\.num_labels=1 is invalid: classification needs >= 2 labels"),
    ("task.greater_is_better=maybe", r"task\.greater_is_better='maybe' is invalid: must be true or false"),
    ("task.text_columns=[a,b,c]", r"task\.text_columns=\['a', 'b', 'c'\] is invalid: give one column, or two"),
    ("task=local_csv", r"task\.data_files=\?\?\? is invalid: a value is required"),
    ("task=local_csv task.data_files={csv}/missing.csv", r"task\.data_files='.*missing\.csv' is invalid: data "
                                                         r"file .*missing\.csv does not exist"),
    ("task=local_csv task.data_files={csv}/sheet.xlsx", r"task\.data_files='.*sheet\.xlsx' is invalid: extensions "
                                                        r"\['\.xlsx'\] are not one"),
    ("task=local_csv task.data_files={csv}/reviews.csv", r"task\.text_columns=\['text'\] is invalid: data file\(s\) "
                                                         r".*reviews\.csv'\] has no column\(s\) \['text'\]; its "
                                                         r"columns: \['review', 'label'\]"),
    ("task=local_csv task.data_files={csv}/good.csv task.label_column=sentiment",
     r"task\.label_column='sentiment' is invalid: .*good\.csv.* has no column\(s\) \['sentiment'\]; its columns: "
     r"\['text', 'label'\]"),
    ("task=local_csv task.data_files={csv}/labels.csv task.label_names=[neg,pos]",
     r"labels\.csv'\] \(train\): column 'label' has label value\(s\) \['meh'\] not in "
     r"task\.label_names=\['neg', 'pos'\] \(nor ids 0\.\.1\)"),
    ("task=local_csv task.data_files={csv}/good.csv task.label_names=[neg,pos,meh]",
     r"task\.label_names=\['neg', 'pos', 'meh'\] is invalid: needs num_labels=2 names"),
    # trainer: every numeric field, the choices, the booleans, a type, an unknown key
    ("trainer.epochs=0", r"trainer\.epochs=0\.0 is invalid: must be > 0"),
    ("trainer.epochs=many", r"trainer\.epochs='many' is invalid: must be a number"),
    ("trainer.max_steps=-5", r"trainer\.max_steps=-5 is invalid: must be > 0 or null"),
    *[(f"trainer.{key}=0", rf"trainer\.{key}=0 is invalid: must be >= 1") for key in TRAINER_INT],
    ("trainer.batch_size=abc", r"trainer\.batch_size='abc' is invalid: must be an integer"),
    ("trainer.weight_decay=-0.1", r"trainer\.weight_decay=-0\.1 is invalid: must be >= 0"),
    ("trainer.warmup_ratio=1.0", r"trainer\.warmup_ratio=1\.0 is invalid: must be in \[0, 1\)"),
    ("trainer.max_grad_norm=0", r"trainer\.max_grad_norm=0\.0 is invalid: must be > 0 or null"),
    ("trainer.eval_every=0", r"trainer\.eval_every=0 is invalid: must be >= 1 or null"),
    ("trainer.checkpoint_every=0", r"trainer\.checkpoint_every=0 is invalid: must be >= 1 or null"),
    ("trainer.timing_warmup_steps=-1", r"trainer\.timing_warmup_steps=-1 is invalid: must be >= 0"),
    ("trainer.num_workers=-1", r"trainer\.num_workers=-1 is invalid: must be >= 0"),
    ("trainer.device=tpu", r"trainer\.device='tpu' is invalid: choose auto, cpu or cuda"),
    ("trainer.precision=fp8", r"trainer\.precision='fp8' is invalid: choose auto, bf16 or fp32"),
    ("trainer.on_nan=ignore", r"trainer\.on_nan='ignore' is invalid: choose fail or skip"),
    ("trainer.gradient_checkpointing=maybe", r"trainer\.gradient_checkpointing='maybe' is invalid: must be true or "
                                             r"false"),
    ("trainer.save_model=maybe", r"trainer\.save_model='maybe' is invalid: must be true or false"),
    ("trainer.restart=maybe", r"trainer\.restart='maybe' is invalid: must be true or false"),
    ("trainer.epoch=3", r"^trainer\.epoch=3 is invalid: not a trainer setting \(did you mean trainer\.epochs\?\); "
                        r"settings: device, precision, epochs"),
    ("+trainer.epoch=3", r"trainer\.epoch=3 is invalid: not a trainer setting \(did you mean trainer\.epochs\?\)"),
    ("trainer.optimizer.bettas=[0.9,0.99]", r"^trainer\.optimizer\.bettas=\[0\.9,0\.99\] is invalid: not a "
                                            r"trainer\.optimizer setting \(did you mean trainer\.optimizer\.betas\?\)"),
    # seed, resume, the top level, syntax
    ("seed=-1", r"seed=-1 is invalid: must be an int >= 0"),
    ("seed=abc", r"seed='abc' is invalid: must be an int >= 0"),
    ("seed=1.5", r"seed=1\.5 is invalid: must be an int >= 0"),
    ("resume=maybe", r"resume='maybe' is invalid: must be true or false"),
    ("sed=1", r"^sed=1 is invalid: not a setting \(did you mean seed\?\); settings: model, task, method"),
    ("+seed=1", r"^\+seed is invalid: seed already exists; set it without the '\+'"),
    ("method.target_modules=[query", r"^'method\.target_modules=\[query' is invalid: not a Hydra override"),
    ("method.r=1,2", r"^method\.r=1,2 is invalid: several values sweep only with --multirun \(-m\)"),
    # launcher, sweeper, logger and the other groups
    ("hydra/launcher=nope", r"^hydra/launcher=nope is invalid: choose basic, joblib, packed, parallel, slurm, "
                            r"submitit_local or submitit_slurm$"),
    ("hydra/sweeper=nope", r"^hydra/sweeper=nope is invalid: choose basic or optuna$"),
    ("hydra/launcher=joblib hydra.launcher.n_jobz=2", r"^hydra\.launcher\.n_jobz=2 is invalid: not a "
                                                      r"hydra\.launcher setting \(did you mean "
                                                      r"hydra\.launcher\.n_jobs\?\)"),
    ("hydra/launcher=packed hydra.launcher.forward=rows",
     r"^hydra\.launcher\.forward='rows' is invalid: choose auto, concat or per_job$"),
    ("hydra/launcher=packed hydra.launcher.max_pack=0", r"^hydra\.launcher\.max_pack=0 is invalid: must be an integer >= 1$"),
    ("logger=nope", r"^logger=nope is invalid: choose none or wandb$"),
    ("logger=wandb logger.mode=sometimes", r"logger\.mode='sometimes' is invalid: choose one of online, offline, "
                                           r"disabled"),
    ("logger=wandb +logger.projct=x", r"logger\.projct='x' is invalid: not a logger setting; settings: dir, entity"),
    ("experiment=nope", r"^experiment=nope is invalid: choose learn_forget, learn_forget_full, lora_family, "
                        r"lora_vs_full, low_rank_analysis, low_rank_analysis_full, rank_ablation or target_modules$"),
    ("hparams_search=nope", r"^hparams_search=nope is invalid: choose lora_lr$"),
    ("placement=q32", r"^placement=q32 is invalid: choose k16, o16, q16, qk8, qkvo4, qv8 or v16$"),
    ("scaling=sqrt", r"^scaling=sqrt is invalid: choose fixed_alpha, fixed_scale or rslora$"),
    ("debug=nope", r"^debug=nope is invalid: choose tiny$"),
    # the optional groups are in the defaults list (as null): the '+' of older commands is refused
    ("+experiment=rank_ablation", r"^\+experiment=rank_ablation is invalid: experiment is in the defaults list; "
                                  r"choose it without the '\+' \(experiment=rank_ablation\)$"),
    ("+placement=q16", r"^\+placement=q16 is invalid: placement is in the defaults list; choose it without the "
                       r"'\+' \(placement=q16\)$"),
    # paths
    ("paths.outptu_dir=x", r"^paths\.outptu_dir=x is invalid: not a paths setting \(did you mean "
                           r"paths\.output_dir\?\); settings: output_dir, cache_dir$"),
    ("paths.cache_dir=[a]", r"paths\.cache_dir=\['a'\] is invalid"),
]


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory):
    """Small local data files: good.csv (text, label in neg/pos), labels.csv (a third label 'meh'),
    reviews.csv (no `text` column), sheet.xlsx (an unsupported format)."""
    d = tmp_path_factory.mktemp("csv")
    rows = [(f"review number {i}", ["neg", "pos"][i % 2]) for i in range(60)]
    (d / "good.csv").write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    (d / "labels.csv").write_text("text,label\n" + "".join(f"review number {i},{['neg', 'pos', 'meh'][i % 3]}\n"
                                                           for i in range(60)))
    (d / "reviews.csv").write_text("review,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    (d / "sheet.xlsx").write_bytes(b"PK\x03\x04 not really a spreadsheet")
    return d


DATA = {"task=local_csv task.data_files={csv}/reviews.csv",
        "task=local_csv task.data_files={csv}/good.csv task.label_column=sentiment",
        "task=local_csv task.data_files={csv}/labels.csv task.label_names=[neg,pos]"}
MODEL = {"method.target_modules=[q_proj]", "method.rank_pattern={key:4}", "method.modules_to_save=[head]"}


def expected_step(overrides: str, pattern: str) -> str:
    if overrides in MODEL:
        return "model"
    if overrides in DATA:
        return "data"
    return "check_overrides" if pattern.startswith("^") else "validate"


def argv(overrides: str, csv_dir) -> list[str]:
    return shlex.split(overrides.replace("{csv}", str(csv_dir)))


def tiny(model_dir) -> list[str]:
    return [f"model.name_or_path={model_dir}", "model.name=tiny_bert", "task.limit_train=16", "task.limit_eval=16"]


def first_error(overrides: list[str], tmp_path) -> tuple[str, str]:
    """(the step that failed, its message): the steps a run takes before its first training step."""
    step = "check_overrides"
    try:
        check_overrides(overrides)
        step = "compose"
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
        step = "validate"
        job_run_name(cfg)  # what run_job computes before validating
        method, _ = validate(cfg)
        step = "data"
        tokenizer = load_tokenizer(cfg.model)
        task = build_task({**cfg.task, "cache_dir": str(tmp_path)}, tokenizer, seed=cfg.seed)
        step = "model"
        prepare_model(cfg, method, load_model(cfg.model, task.kind, task.num_labels, tokenizer))
    except ValueError as e:  # ConfigError is one
        return step, str(e)
    return "none", "no error"


def test_the_table_covers_every_group():
    assert len(BAD) >= 40
    keys = {o.split("=")[0].lstrip("+").split(".")[0] for row, _ in BAD for o in row.split()}
    assert {"method", "model", "task", "trainer", "seed", "resume", "hydra/launcher", "hydra/sweeper",
            "logger", "experiment", "hparams_search", "placement", "scaling", "debug", "paths"} <= keys


@pytest.mark.parametrize("overrides, pattern", BAD, ids=[row for row, _ in BAD])
def test_bad_value_fails_early_with_one_line(overrides, pattern, tiny_model_dir, csv_dir, tmp_path):
    step, message = first_error([*tiny(tiny_model_dir), *argv(overrides, csv_dir)], tmp_path)
    assert "\n" not in message, message
    assert re.search(pattern, message), f"{step}: {message}"
    # The cheapest step that can know: config errors never wait for data, data errors never for the model.
    assert step == expected_step(overrides, pattern), (step, message)


# ----------------------------------------------------------------------------- the real CLI


CLI = [
    "method.alpha=abc",  # validate: an OmegaConf type error
    "model.dtype=float7",  # validate: was a bare KeyError after the model had loaded
    "trainer.epoch=3",  # before Hydra: an unknown key
    "hydra/launcher=nope",  # before Hydra: an unknown group option
    "task=local_csv task.data_files={csv}/labels.csv task.label_names=[neg,pos]",  # the data
    "method.target_modules=[q_proj]",  # the model
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", CLI)
def test_cli_exits_nonzero_in_seconds_with_one_line_and_keeps_the_completed_record(
        overrides, tiny_model_dir, csv_dir, tmp_path):
    pattern = dict(BAD)[overrides]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    done = ROOT / "tests" / "fixtures" / "sweep_lora_vs_full" / "3_lora-r4-qv-seed0" / "results.json"
    shutil.copy(done, run_dir / "results.json")  # a completed run of this command, from before
    before = (run_dir / "results.json").read_bytes()
    cmd = [sys.executable, "-m", "harness.train", *tiny(tiny_model_dir), *argv(overrides, csv_dir),
           f"hydra.run.dir={run_dir}",
           f"task.cache_dir={tmp_path / 'cache'}" if "local_csv" in overrides else "trainer.save_model=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    console = proc.stdout + proc.stderr
    assert proc.returncode == 1, console[-3000:]
    assert elapsed < 60, elapsed  # interpreter start and imports included; the job itself: below
    hits = [line for line in console.splitlines() if re.search(pattern.lstrip("^"), line)]
    assert len(hits) == 1, console[-3000:]
    assert "Traceback" not in console
    assert (run_dir / "results.json").read_bytes() == before  # never overwritten
    failed = run_dir / "results.failed.json"
    if console.startswith("harness-train: error:"):  # rejected before Hydra: no job ran at all
        assert console.strip() == hits[0] and not failed.exists()
        return
    record = json.loads(failed.read_text())
    assert record["status"] == "failed" and re.search(pattern.lstrip("^"), record["error"])
    assert record["wall_time_s"] < (30 if "q_proj" in overrides else 10)  # no training, no long load
    assert record["params"] is None and "trainable params" not in console  # nothing was made trainable
    assert "Traceback" in (run_dir / "train.log").read_text()  # the full trace is in the job log
