"""The real CLI end to end on a tiny BERT: records, determinism, bad overrides, the loop's pieces."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.train import warmup_linear_decay
from tests.helpers import ROOT, cli_env, metrics_rows, read_record, run_cli


@pytest.mark.slow
def test_lora_run_writes_complete_record_and_learns(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "lora"
    proc = run_cli(tiny_model_dir, run_dir, "trainer.log_every=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_record(run_dir)
    assert rec["status"] == "completed" and rec["error"] is None
    assert (rec["method"], rec["model"], rec["task"], rec["seed"]) == ("lora", "tiny_bert", "rotten_tomatoes", 0)
    assert rec["lora"] == {"r": 8, "alpha": 16, "target_modules": ["query", "value"], "dropout": 0.0,
                           "init": "kaiming", "rslora": False, "use_dora": False, "freeze_a": False, "lr_ratio": None}
    # r * (in + out) per adapted layer: 2 layers x {query, value} x 8 * (32 + 32), plus the head
    assert rec["params"]["adapter"] == 2 * 2 * 8 * 64
    assert rec["params"]["head"] == (32 * 32 + 32) + (32 * 2 + 2)  # pooler + classifier
    assert rec["params"]["trainable"] == rec["params"]["adapter"] + rec["params"]["head"]
    for key in ("tokens_per_s", "padded_tokens_per_s", "samples_per_s", "step_time_s"):
        assert rec["throughput"][key] > 0
    assert rec["throughput"]["tokens_per_s"] < rec["throughput"]["padded_tokens_per_s"]
    assert 0 < rec["train_time_s"] < rec["wall_time_s"]
    on_gpu = torch.cuda.is_available()  # trainer.device=auto trains there
    assert rec["memory"]["peak_rss_gib"] > 0 and (rec["memory"]["cuda_peak_allocated_gib"] is None) != on_gpu
    assert rec["memory"]["state_gib"] == pytest.approx(
        rec["memory"]["param_gib"] + rec["memory"]["grad_gib"] + rec["memory"]["optimizer_gib"])
    assert set(rec["metrics"]["final"]) >= {"loss", "accuracy", "f1"}
    assert rec["metrics"]["main_metric"] == "accuracy" and rec["steps"] == 12
    assert rec["versions"]["torch"] == torch.__version__.split("+")[0] or rec["versions"]["torch"] == torch.__version__
    assert len(rec["git"]["commit"]) == 40
    assert rec["config"]["method"]["r"] == 8
    assert rec["device"] == (torch.cuda.get_device_name() if on_gpu else "cpu")
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert not (run_dir / "checkpoints").exists()
    losses = [r["train/loss"] for r in metrics_rows(run_dir) if "train/loss" in r]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns


@pytest.mark.slow
def test_full_finetuning_trains_everything(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "full"
    proc = run_cli(tiny_model_dir, run_dir, "method=full", "trainer.save_model=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_record(run_dir)
    assert rec["status"] == "completed" and rec["lora"] is None and rec["method"] == "full"
    assert rec["params"]["trainable"] == rec["params"]["total"] and rec["params"]["adapter"] == 0
    assert rec["lr"] == 1e-2


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(tiny_model_dir, tmp_path):
    recs = []
    for name in ("a", "b"):
        proc = run_cli(tiny_model_dir, tmp_path / name, "method.dropout=0.1", "trainer.save_model=false")
        assert proc.returncode == 0, proc.stderr[-2000:]
        recs.append(read_record(tmp_path / name))
    assert recs[0]["metrics"] == recs[1]["metrics"]
    losses = [[r["train/loss"] for r in metrics_rows(tmp_path / n) if "train/loss" in r] for n in ("a", "b")]
    assert losses[0] == losses[1]


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("method.lr=-1", "method.lr=-1.0 is invalid: must be > 0"),
    ("method.r=0", "method.r"),
    ("trainer.batch_size=0", "trainer.batch_size=0 is invalid: must be >= 1"),
    ("model.config_overrides={hidden_dropout:0}", "model.config_overrides.hidden_dropout=0 is invalid: not a field of BertConfig"),
])
def test_bad_value_fails_with_one_line_and_failed_record(tiny_model_dir, tmp_path, override, message):
    proc = run_cli(tiny_model_dir, tmp_path / "bad", override)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "failed:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    rec = read_record(tmp_path / "bad")
    assert rec["status"] == "failed" and message in rec["error"]


@pytest.mark.slow
def test_unknown_group_option_exits_nonzero_naming_choices(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.train", "method=lorax", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("harness-train: error: method=lorax is invalid: choose dora, full, lora, "
                                   "lora_all_linear, lora_fa, lora_plus or olora")


def test_warmup_then_linear_decay():
    f = warmup_linear_decay(warmup=2, total=6)
    assert [round(f(s), 4) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]


def _layer_forwards(model, batch) -> tuple[int, int]:
    """How often a module inside the first encoder layer runs forward: in the forward pass, and in
    the backward pass. (Inside: transformers checkpoints a layer's `forward`, so the layer's own
    hooks stay outside the recomputation.)"""
    calls = []
    handle = model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda *_: calls.append(1))
    try:
        loss = model(**batch).logits.square().sum()
        forward = len(calls)
        loss.backward()
    finally:
        handle.remove()
    return forward, len(calls) - forward


@pytest.mark.parametrize("flag", [False, True])
def test_gradient_checkpointing_recomputes_activations_in_the_backward_pass(tiny_model_dir, flag):
    """build_model (what fit trains) honours trainer.gradient_checkpointing: with it, each layer
    runs forward once more during backward (its activations were not kept); without, never."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from harness.models import load_tokenizer
    from harness.schema import typed
    from harness.config import MethodConfig, TrainerConfig
    from harness.train import build_model

    cfg = OmegaConf.create({"model": {**OmegaConf.load(ROOT / "conf" / "model" / "minilm.yaml"),
                                      "name_or_path": str(tiny_model_dir), "name": "tiny_bert"}})
    method = typed("method", MethodConfig, OmegaConf.load(ROOT / "conf" / "method" / "lora.yaml"))
    tcfg = typed("trainer", TrainerConfig, {**OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml"),
                                            "gradient_checkpointing": flag})
    tokenizer = load_tokenizer(cfg.model)
    task = SimpleNamespace(kind="classification", num_labels=2)
    model, adapted = build_model(cfg, method, tcfg, task, tokenizer, torch.device("cpu"))
    assert adapted and model.bert.encoder.layer[0].gradient_checkpointing == flag
    model.train()
    batch = dict(tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt"))
    assert _layer_forwards(model, batch) == (1, 1 if flag else 0)


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_training(tiny_model_dir, tmp_path):
    for name, flag in (("plain", "false"), ("ckpt", "true")):
        proc = run_cli(tiny_model_dir, tmp_path / name, f"trainer.gradient_checkpointing={flag}",
                       "trainer.save_model=false")
        assert proc.returncode == 0, proc.stderr[-2000:]
    plain, ckpt = read_record(tmp_path / "plain"), read_record(tmp_path / "ckpt")
    assert ckpt["metrics"]["final"] == pytest.approx(plain["metrics"]["final"], rel=1e-5)
    assert ckpt["metrics"]["final"]["accuracy"] == plain["metrics"]["final"]["accuracy"]


@pytest.mark.slow
def test_causal_lm_lora_on_chat_pairs_reports_perplexity_and_generations(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "clm"
    proc = run_cli(tiny_llama_dir, run_dir, "task=chatterbot", "model.name=tiny_llama", "model.head_modules=[]",
                   "method.target_modules=all-linear", "task.limit_train=64", "task.limit_eval=16",
                   "trainer.log_every=1", "trainer.epochs=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_record(run_dir)
    assert rec["status"] == "completed" and rec["task"] == "chatterbot"
    final = rec["metrics"]["final"]
    assert final["perplexity"] == pytest.approx(math.exp(final["loss"]), rel=1e-6)
    # all-linear on Llama: q, k, v, o, gate, up, down in each of 2 layers; never the lm_head
    assert rec["params"]["head"] == 0 and rec["params"]["adapter"] > 0
    assert len(rec["generations"]) == 4 and {"prompt", "reference", "generation"} <= set(rec["generations"][0])
    losses = [r["train/loss"] for r in metrics_rows(run_dir) if "train/loss" in r]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_console_script_finds_the_configs_from_any_directory(tmp_path):
    script = Path(sys.executable).parent / "harness-train"
    proc = subprocess.run([str(script), "--cfg", "job", "method=full"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: full" in proc.stdout and "name: minilm" in proc.stdout


def _score_by_hand(model, examples) -> dict:
    """Accuracy and mean cross-entropy, one unpadded example at a time (no harness scoring code)."""
    import torch.nn.functional as F

    losses, correct = [], 0
    with torch.no_grad():
        for ex in examples:
            inputs = {k: torch.tensor([ex[k]]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in ex}
            logits = model(**inputs).logits[0]
            losses.append(F.cross_entropy(logits[None], torch.tensor([ex["labels"]])).item())
            correct += int(logits.argmax()) == ex["labels"]
    return {"accuracy": correct / len(examples), "loss": sum(losses) / len(losses)}


@pytest.mark.slow
def test_test_split_is_scored_with_the_final_and_the_best_validation_weights(tiny_model_dir, tmp_path):
    """Selection on validation, report on test: metrics.test.final from the final weights and
    metrics.test.best from those of the best validation evaluation, each equal to a by-hand score of
    the saved adapter (adapter/, adapter_best/) on the test split."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.data import build_task
    from harness.lora import load_adapter

    run_dir = tmp_path / "run"
    proc = run_cli(tiny_model_dir, run_dir, "trainer.select_best=true", "trainer.eval_every=3",
                   "method.lr=3e-2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_record(run_dir)
    metrics = rec["metrics"]
    evals = [r for r in metrics_rows(run_dir) if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6, 9, 12]
    best_row = max(evals, key=lambda r: r["eval/accuracy"])  # the first of equal maxima, as the trainer
    assert metrics["best_step"] == best_row["step"] != 12, "pick a setting whose best is not the last step"
    test = metrics["test"]
    assert set(test) == {"final", "best", "best_step"} and test["best_step"] == metrics["best_step"]
    assert set(test["final"]) == {"loss", "accuracy", "f1"} and test["final"] != test["best"]
    assert test["final"] != metrics["final"]  # another split, other numbers

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    task_cfg = {**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "task" / "rotten_tomatoes.yaml")),
                "limit_train": 96, "limit_eval": 32, "cache_dir": str(tmp_path / "cache")}
    task = build_task(task_cfg, tokenizer, seed=0)
    assert len(task.test) == 32
    for folder, which in (("adapter", "final"), ("adapter_best", "best")):
        torch.manual_seed(123)  # any head: the adapter carries the trained classifier and pooler
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).eval()
        load_adapter(model, run_dir / folder)
        by_hand = _score_by_hand(model, task.test)
        assert test[which]["accuracy"] == by_hand["accuracy"]
        assert test[which]["loss"] == pytest.approx(by_hand["loss"], abs=1e-5)
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)  # a folder every tool opens
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_without_select_best_test_best_is_null_and_without_a_test_split_test_is_null(tiny_model_dir, tmp_path):
    rows = [f"review {i} {'good' if i % 2 else 'bad'} movie,{i % 2}\n" for i in range(40)]
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(rows[:30]))
    (tmp_path / "dev.csv").write_text("text,label\n" + "".join(rows[30:]))
    plain = tmp_path / "plain"
    proc = run_cli(tiny_model_dir, plain, "trainer.save_model=false", "trainer.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    test = read_record(plain)["metrics"]["test"]
    assert test["best"] is None and test["best_step"] is None and set(test["final"]) == {"loss", "accuracy", "f1"}

    no_test = tmp_path / "no_test"
    proc = run_cli(tiny_model_dir, no_test, "task=local_csv", "trainer.save_model=false", "trainer.max_steps=2",
                   "trainer.select_best=true",
                   f"task.data_files={{train:{tmp_path / 'train.csv'},eval:{tmp_path / 'dev.csv'}}}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_record(no_test)
    assert rec["status"] == "completed" and rec["metrics"]["test"] is None


def test_best_weights_survive_a_restart_only_for_their_own_step(tiny_bert, tmp_path):
    """What a resumed select_best run relies on: the kept weights come back from disk for the best
    step the checkpoint names, not for another; swapped_in puts the model's own weights back."""
    from harness.lora import LoraConfig, apply_lora
    from harness.train import BestWeights

    apply_lora(tiny_bert, LoraConfig(r=2, alpha=4, modules_to_save=["classifier"]))
    trainable = {n: p for n, p in tiny_bert.named_parameters() if p.requires_grad}
    kept = BestWeights(tmp_path / "checkpoints" / "best.safetensors")
    with torch.no_grad():
        trainable["classifier.bias"].fill_(0.5)
    kept.keep(tiny_bert, step=6)
    with torch.no_grad():
        trainable["classifier.bias"].fill_(-1.0)  # training went on
    again = BestWeights(tmp_path / "checkpoints" / "best.safetensors")  # a new process
    assert not again.restore(step=3) and again.tensors is None
    assert again.restore(step=6) and again.step == 6
    assert set(again.tensors) == set(trainable)
    with again.swapped_in(tiny_bert):
        assert torch.equal(tiny_bert.classifier.bias, torch.full((2,), 0.5))
    assert torch.equal(tiny_bert.classifier.bias, torch.full((2,), -1.0))


@pytest.mark.slow
def test_without_a_terminal_the_job_log_gets_progress_lines(tiny_llama_dir, tmp_path):
    """As under nohup / Slurm: stdout and stderr go to a file, so tqdm's bar is off; every logging
    step must still say how far the run is, in the console log and in train.log. Also: the default
    targets ("query+value") resolve to Llama's q_proj / v_proj, and results.json records those names."""
    run_dir = tmp_path / "nohup"
    cmd = [sys.executable, "-m", "harness.train", f"model.name_or_path={tiny_llama_dir}", "model.name=tiny_llama",
           "model.head_modules=[]", "task=chatterbot", "task.limit_train=48", "task.limit_eval=8",
           "trainer.batch_size=8", "trainer.log_every=2", f"hydra.run.dir={run_dir}", "trainer.save_model=false"]
    with open(tmp_path / "job.log", "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(), stdout=out, stderr=subprocess.STDOUT, timeout=300)
    console = (tmp_path / "job.log").read_text()
    assert proc.returncode == 0, console[-3000:]
    pattern = r"step (\d+)/6 \((\d+)%\)  loss (\d+\.\d{4})  ([\d,]+) tokens/s  elapsed \d:\d\d:\d\d  ETA (\d:\d\d:\d\d)"
    for text in (console, (run_dir / "train.log").read_text()):
        lines = re.findall(pattern, text)
        assert [(int(s), int(p)) for s, p, *_ in lines] == [(2, 33), (4, 66), (6, 100)], text[-2000:]
        assert lines[-1][-1] == "0:00:00"  # nothing left after the last step
    rows = {r["step"]: r for r in metrics_rows(run_dir) if "train/loss" in r}
    for step, _, loss, tokens_per_s, _ in lines:  # the same window numbers metrics.jsonl gets
        assert float(loss) == pytest.approx(rows[int(step)]["train/loss"], abs=5e-5)
        assert int(tokens_per_s.replace(",", "")) == pytest.approx(rows[int(step)]["train/tokens_per_s"], abs=0.5)
    rec = read_record(run_dir)
    assert rec["lora"]["target_modules"] == ["q_proj", "v_proj"]
    # 2 layers x (q_proj 32 -> 32, v_proj 32 -> 16 with grouped-query attention) at r=8
    assert rec["params"]["adapter"] == 2 * (8 * (32 + 32) + 8 * (32 + 16))


# r=8 on query+value of the 2-layer, 32-wide BERT: A and B are 4 x (8 x 32) each; the head is the
# pooler and the classifier (1056 + 66).
FAMILY = {
    "dora": ({"use_dora": True}, 4 * (8 * 64 + 32)),   # plus one magnitude per output feature
    "lora_plus": ({"lr_ratio": 16}, 4 * 8 * 64),
    "olora": ({"init": "olora"}, 4 * 8 * 64),
    "lora_fa": ({"freeze_a": True}, 4 * 8 * 32),       # B alone
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(FAMILY))
def test_each_lora_family_preset_trains_end_to_end(tiny_model_dir, tmp_path, preset):
    run_dir = tmp_path / preset
    proc = run_cli(tiny_model_dir, run_dir, f"method={preset}", "trainer.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_record(run_dir)
    settings, adapter = FAMILY[preset]
    plain = {"init": "kaiming", "use_dora": False, "freeze_a": False, "lr_ratio": None}
    assert {k: rec["lora"][k] for k in plain} == {**plain, **settings}
    assert rec["config"]["method"] | settings == rec["config"]["method"]  # the composed config says it too
    assert rec["params"]["adapter"] == adapter and rec["params"]["head"] == 1056 + 66
    assert rec["status"] == "completed" and math.isfinite(rec["metrics"]["final"]["loss"])
    assert rec["run_name"].startswith("lora-r8-a16-qv-") and rec["run_name"] != "lora-r8-a16-qv-seed0"
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is (preset == "dora")
    assert config["r"] == (16 if preset == "olora" else 8)  # olora: the plain rank-2r delta on W
