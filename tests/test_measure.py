"""What a run measures (harness/measure.py and the trainer's use of it), each figure against an
independent computation: peak RSS of a sweep job vs the same job alone, step time with a slow data
path, model FLOPs against a hand count and torch's FlopCounterMode, CUDA training vs evaluation
peaks, memory in every logged row, and gradient accumulation against one big batch."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM)

from harness import measure, table
from harness.lora import apply_lora
from harness.measure import CudaPeaks, StepTimer, model_flops, peak_bf16_flops
from harness.scoring import loss_items, summed_loss
from harness.tasks import Collator
from harness.tracking import read_offline_run
from harness.train import accumulate_gradients
from tests.helpers import ROOT, TINY_RUN, cli_env, metrics_rows, read_record, run_cli

NO_DROPOUT = "model.dropout=0.0"  # every dropout of the checkpoint off (also minilm's default)


def run_patched(patch: str, *overrides, multirun=False, timeout=300):
    """`harness.train` in a process where `patch` (Python source) ran first: the job's forked
    child inherits it, so a test can slow the data path or kill one job."""
    code = f"import sys\n{patch}\nfrom harness.train import main\nmain()"
    cmd = [sys.executable, "-c", code, *(["-m"] if multirun else []), "hydra.job.name=train", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------ peak RSS in a sweep


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory, tiny_model_dir):
    """A 4-layer, 384-wide BERT (~25M params): a first sweep job that leaves memory behind."""
    path = tmp_path_factory.mktemp("wide_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1536, max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def test_sweep_job_peak_rss_equals_the_same_job_run_alone(tiny_model_dir, wide_model_dir, tmp_path):
    # Job 0 trains the wide model, job 1 the tiny one; in one shared process job 1 read 16% above
    # the same command alone (0.771 vs 0.666 GiB), however VmHWM was reset at its start.
    sweep = tmp_path / "sweep"
    proc = run_cli(tiny_model_dir, sweep, f"model.name_or_path={wide_model_dir},{tiny_model_dir}",
                   "trainer.save_model=false", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    wide, tiny = (read_record(d) for d in jobs)
    alone = tmp_path / "alone"
    assert run_cli(tiny_model_dir, alone, "trainer.save_model=false").returncode == 0
    solo = read_record(alone)
    assert wide["memory"]["peak_rss_gib"] > 1.05 * solo["memory"]["peak_rss_gib"]  # job 0 did hold more
    assert tiny["memory"]["peak_rss_gib"] == pytest.approx(solo["memory"]["peak_rss_gib"], rel=0.03)
    # the job ran in a child process, and its log still reached the job's log file
    assert "trainable params" in (jobs[1] / "train.log").read_text()


def test_a_sweep_job_killed_outright_is_recorded_and_the_sweep_goes_on(tiny_model_dir, tmp_path):
    # What the OOM killer does: SIGKILL to the job's process, no chance to write its own record.
    patch = ("import os, signal, harness.train.loop as t\n_fit = t.fit\n"
             "def fit(cfg, *a, **k):\n"
             "    if cfg.seed == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
             "    return _fit(cfg, *a, **k)\n"
             "t.fit = fit")
    sweep = tmp_path / "sweep"
    proc = run_patched(patch, f"model.name_or_path={tiny_model_dir}", *TINY_RUN, "trainer.save_model=false",
                       "seed=0,1,2", f"hydra.sweep.dir={sweep}", multirun=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    records = [read_record(d) for d in sorted(p.parent for p in sweep.glob("*/results.json"))]
    assert [(r["seed"], r["status"]) for r in records] == [(0, "completed"), (1, "failed"), (2, "completed")]
    assert records[1]["error"] == "job process killed by SIGKILL (out of memory?)"
    assert "1 job(s) did not complete" in proc.stderr


# ------------------------------------------------------------------------------ step time


def test_step_time_includes_fetching_and_collating_the_batches(tiny_model_dir, tmp_path):
    # 0.2 s per collated batch, 2 micro-batches per step: the data path is >= 0.4 s of every step.
    # Fetched before the clock started, as before, the tiny model's step would read ~0.02 s.
    patch = ("import time, harness.tasks as t\n_call = t.Collator.__call__\n"
             "t.Collator.__call__ = lambda self, ex: (time.sleep(0.2), _call(self, ex))[1]")
    run_dir = tmp_path / "slow"
    proc = run_patched(patch, f"model.name_or_path={tiny_model_dir}", *TINY_RUN, "trainer.batch_size=4",
                       "trainer.grad_accum=2", "trainer.save_model=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = read_record(run_dir)
    t = rec["throughput"]
    assert rec["steps"] == 12 and t["steps_timed"] == 9
    assert 0.4 <= t["data_time_s"] < t["step_time_s"]
    assert rec["train_time_s"] >= 12 * 0.4
    # samples/s over the 9 timed steps of 8 examples can be no more than 8 per 0.4 s
    assert t["samples_per_s"] <= 8 / 0.4


# ------------------------------------------------------------------------------ FLOPs and MFU


def _tiny_bert(**kw):
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, attn_implementation="eager", **{"num_labels": 2, **kw}))


def _tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0, attn_implementation="eager"))


def test_model_flops_match_a_hand_count():
    # tiny BERT, per layer: q, k, v, o 4 x 32x32 = 4,096 + FFN 2 x 32x37 = 2,368 -> 6,464; x 2 layers = 12,928
    # weights on every token; pooler 32x32 + classifier 32x2 = 1,088 on one row per sequence.
    # Full FT: 6 FLOPs per weight (forward, input gradient, weight gradient). Attention:
    # 12 * layers 2 * heads 4 * head_dim 8 = 768 per L^2.
    full = model_flops(_tiny_bert())
    assert (full.per_token, full.per_sequence, full.attention) == (6 * 12_928, 6 * 1_088, 768)
    assert (full.matmul_params, full.trainable_matmul_params) == (14_016, 14_016)
    # LoRA q+v r=8 + pooler/classifier: adapters 2 layers x 2 x 8 x (32 + 32) = 2,048 weights, trainable;
    # the 12,928 base weights frozen (4 FLOPs each: no weight gradient); the heads train (6 each).
    lora = _tiny_bert()
    apply_lora(lora, r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier", "pooler"])
    f = model_flops(lora)
    assert (f.per_token, f.per_sequence, f.attention) == (4 * (12_928 + 2_048) + 2 * 2_048, 6 * 1_088, 768)
    assert (f.matmul_params, f.trainable_matmul_params) == (16_064, 3_136)
    # a batch counts its real tokens only: lengths 4 and 2 (the second padded to 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert f.of_batch(mask) == 64_000 * 6 + 6_528 * 2 + 768 * (16 + 4)
    # GPT-2 (Conv1D, tied LM head): per layer c_attn 32x96 + attn c_proj 32x32 + c_fc 32x128 + mlp c_proj
    # 128x32 = 12,288; x 2 + lm_head 32x99 = 27,744 weights, all on every token
    gpt2 = model_flops(_tiny_gpt2())
    assert (gpt2.per_token, gpt2.per_sequence, gpt2.attention) == (6 * 27_744, 0, 768)


@pytest.mark.parametrize("build", [_tiny_bert, _tiny_gpt2], ids=["bert", "gpt2"])
def test_full_finetuning_flops_equal_what_torch_counts_in_a_training_step(build):
    # Full fine-tuning computes every input and weight gradient, so the model count must equal the
    # matmul FLOPs torch's FlopCounterMode sees in one forward + backward (no padding).
    model = build()
    ids = torch.randint(0, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    labels = torch.tensor([0, 1]) if isinstance(model, BertForSequenceClassification) else ids
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert model_flops(model).of_batch(mask) == counter.get_total_flops()


def test_peak_flops_table_and_mfu_definition():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert (peak_bf16_flops("NVIDIA L4"), peak_bf16_flops("NVIDIA L40"), peak_bf16_flops("NVIDIA L40S")) == (
        121e12, 181e12, 362e12)
    assert peak_bf16_flops("cpu") is None and peak_bf16_flops(None) is None
    timer = StepTimer(warmup=1, device=torch.device("cpu"))
    for tokens in (10, 20, 30):
        timer.start()
        timer.data_ready()
        timer.stop(tokens, 40, 2, flops=1000.0 * tokens)
    s = timer.summary(peak_flops=1e6)
    assert s["steps_timed"] == 2 and s["flops_per_token"] == 1000.0
    assert s["mfu"] == pytest.approx(s["flops_per_token"] * s["tokens_per_s"] / 1e6, rel=1e-12)
    assert timer.summary()["mfu"] is None  # no known peak (a CPU): no MFU


def _tiny_run_task(tiny_model_dir):
    from omegaconf import OmegaConf

    from harness.tasks import build_task

    cfg = OmegaConf.load(ROOT / "conf" / "task" / "rotten_tomatoes.yaml")
    cfg.limit_train, cfg.limit_eval = 96, 32
    return build_task(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), seed=0)


# ------------------------------------------------------------------------------ one run, every field


@pytest.fixture(scope="module")
def wandb_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("measured")
    proc = run_cli(tiny_model_dir, run_dir, "trainer.log_every=1", "logger=wandb", "logger.mode=offline",
                   "trainer.save_model=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_record_flops_per_token_is_the_hand_count_over_the_timed_batches(tiny_model_dir, wandb_run):
    rec = read_record(wandb_run)
    task = _tiny_run_task(tiny_model_dir)
    # steps 4..12 (3 warm-up steps untimed), one batch of 8 each; LoRA q+v on the tiny BERT:
    # 64,000 FLOPs per token, 6,528 per sequence, 768 * L^2 attention
    batches = task.train_batches(8, 0, 0)[3:12]
    lengths = [len(task.train[i]["input_ids"]) for b in batches for i in b]
    flops = sum(64_000 * n + 6_528 + 768 * n * n for n in lengths)
    t = rec["throughput"]
    assert t["flops_per_token"] == pytest.approx(flops / sum(lengths), rel=1e-12)
    if rec["device"] == "cpu":
        assert t["mfu"] is None and t["peak_flops"] is None
    elif t["peak_flops"]:
        assert t["mfu"] == pytest.approx(t["flops_per_token"] * t["tokens_per_s"] / t["peak_flops"], rel=1e-9)


def test_memory_fields_split_training_and_evaluation_peaks(wandb_run):
    rec = read_record(wandb_run)
    mem = rec["memory"]
    keys = ("cuda_peak_allocated_gib", "cuda_peak_reserved_gib", "cuda_eval_peak_allocated_gib",
            "cuda_eval_peak_reserved_gib")
    assert set(keys) <= set(mem)
    if rec["device"] == "cpu":
        assert [mem[k] for k in keys] == [None] * 4
    else:
        assert all(mem[k] > 0 for k in keys)
        assert mem["cuda_peak_allocated_gib"] <= mem["cuda_peak_reserved_gib"]


def test_every_logged_training_row_carries_memory_in_jsonl_and_wandb(wandb_run):
    rec = read_record(wandb_run)
    rows = [r for r in metrics_rows(wandb_run) if "train/loss" in r]
    assert len(rows) == 12
    for row in rows:
        assert 0.1 < row["train/rss_gib"] <= rec["memory"]["peak_rss_gib"] + 1e-6
        if rec["device"] != "cpu":
            assert 0 < row["train/cuda_allocated_gib"] <= row["train/cuda_peak_allocated_gib"]
    (run,) = [read_offline_run(p) for p in (wandb_run / "wandb").glob("offline-run-*")]
    streamed = [h["train/rss_gib"] for h in run.history if "train/rss_gib" in h]
    assert streamed == pytest.approx([r["train/rss_gib"] for r in rows])


def test_rss_gib_is_the_resident_memory_now_not_the_peak():
    before = measure.rss_gib()
    x = torch.ones(64 * 2**20)  # 256 MiB, written, so resident
    during = measure.rss_gib()
    del x  # a large block goes back to the OS at once
    after = measure.rss_gib()
    assert during - before == pytest.approx(0.25, abs=0.03)
    assert after - before == pytest.approx(0, abs=0.03)
    assert measure.peak_rss_gib() >= during - 1e-3


# ------------------------------------------------------------------------------ CUDA peaks


class FakeAllocator:
    """The torch.cuda calls CudaPeaks makes, over a pretend allocator: `use(n)` allocates n bytes."""

    def __init__(self):
        self.allocated = self.peak = self.reserved = self.peak_reserved = 0

    def use(self, n):
        self.allocated += n
        self.reserved = max(self.reserved, self.allocated)
        self.peak, self.peak_reserved = max(self.peak, self.allocated), max(self.peak_reserved, self.reserved)

    def free(self, n):
        self.allocated -= n  # the cache keeps the blocks reserved

    def empty_cache(self):
        self.reserved = self.allocated

    def reset_peak_memory_stats(self, device=None):
        self.peak, self.peak_reserved = self.allocated, self.reserved

    def install(self, monkeypatch):
        for name, fn in (("max_memory_allocated", lambda d=None: self.peak),
                         ("max_memory_reserved", lambda d=None: self.peak_reserved),
                         ("memory_allocated", lambda d=None: self.allocated),
                         ("empty_cache", self.empty_cache), ("reset_peak_memory_stats", self.reset_peak_memory_stats)):
            monkeypatch.setattr(torch.cuda, name, fn)


def test_cuda_peaks_keep_evaluation_out_of_the_training_peak(monkeypatch):
    gib = 1024**3
    fake = FakeAllocator()
    fake.install(monkeypatch)
    fake.use(3 * gib)            # the model, loaded before the window starts
    fake.use(9 * gib)
    fake.free(9 * gib)           # model loading's scratch, still cached
    peaks = CudaPeaks(torch.device("cuda"))
    peaks.start()                # empties the cache: loading's 12 GiB reserved must not count
    fake.use(4 * gib)
    fake.free(4 * gib)           # a training step: peak 7 GiB
    with peaks.evaluation():
        fake.use(10 * gib)       # evaluation batches: peak 13 GiB, cached afterwards
        fake.free(10 * gib)
    fake.use(5 * gib)            # training after the evaluation: 8 GiB, in a freshly emptied cache
    row = measure.memory_row(torch.device("cuda"), peaks)
    assert (row["train/cuda_allocated_gib"], row["train/cuda_peak_allocated_gib"]) == (8, 8)
    fake.free(5 * gib)
    s = peaks.summary()
    assert (s["cuda_peak_allocated_gib"], s["cuda_peak_reserved_gib"]) == (8, 8)
    assert (s["cuda_eval_peak_allocated_gib"], s["cuda_eval_peak_reserved_gib"]) == (13, 13)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peaks_on_a_real_device():
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    peaks = CudaPeaks(device)
    peaks.start()
    x = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)  # 64 MiB in training
    del x
    with peaks.evaluation():
        y = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)  # 256 MiB in evaluation
        del y
    s = peaks.summary()
    assert 64 / 1024 <= s["cuda_peak_allocated_gib"] < 256 / 1024
    assert s["cuda_eval_peak_allocated_gib"] >= 256 / 1024


# ------------------------------------------------------------------------------ gradient accumulation


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _accumulated(model, micro, kind):
    model.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, micro, kind, torch.device("cpu"))
    return loss, _grads(model)


def _examples_classification():
    # four examples of different lengths; micro-batches of 3 and 1 (a short last batch)
    ids = [[5, 6, 7, 8, 9], [5, 6], [7, 8, 9], [9, 8, 7, 6, 5, 4]]
    return [{"input_ids": x, "attention_mask": [1] * len(x), "labels": i % 2} for i, x in enumerate(ids)]


def _examples_causal():
    # prompt tokens labelled -100; 4, 1, 3 and 2 response tokens
    rows = [([5, 6], [7, 8, 9, 10]), ([5, 6, 7], [8]), ([9], [10, 11, 12]), ([4, 5, 6, 7], [8, 9])]
    out = []
    for prompt, response in rows:
        ids = prompt + response
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + response})
    return out


def _tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


@pytest.mark.parametrize("kind, build, examples, split", [
    ("classification", lambda: _tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
     _examples_classification, 3),
    ("causal_lm", _tiny_llama, _examples_causal, 1),  # Llama has no dropout by default
])
def test_grad_accum_2_equals_one_batch_of_both(kind, build, examples, split):
    model = build().train()
    collate = Collator(pad_token_id=0, kind=kind)
    ex = examples()
    one_loss, one = _accumulated(model, [collate(ex)], kind)
    two_loss, two = _accumulated(model, [collate(ex[:split]), collate(ex[split:])], kind)
    assert float(two_loss) == pytest.approx(float(one_loss), rel=1e-6)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-7, msg=name)
    # the old mean of per-micro-batch means: a different gradient, so the comparison above can fail
    model.zero_grad(set_to_none=True)
    for b in (collate(ex[:split]), collate(ex[split:])):
        (model(**b).loss / 2).backward()
    old = _grads(model)
    assert not all(torch.allclose(old[n], one[n], rtol=1e-3, atol=1e-6) for n in one)


@pytest.mark.parametrize("kind", ["classification", "regression", "causal_lm"])
def test_summed_loss_over_its_items_is_the_model_own_loss(kind):
    if kind == "causal_lm":
        model, ex = _tiny_llama(), _examples_causal()
    else:
        model = _tiny_bert(num_labels=1 if kind == "regression" else 2, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0).eval()
        ex = _examples_classification()
        if kind == "regression":
            ex = [{**e, "labels": 0.5 + e["labels"]} for e in ex]
    batch = Collator(pad_token_id=0, kind=kind)(ex)
    with torch.no_grad():
        out = model(**batch)
    ours = summed_loss(kind, out.logits, batch["labels"]) / loss_items(kind, batch["labels"])
    assert loss_items(kind, batch["labels"]) == (10 if kind == "causal_lm" else 4)
    assert float(ours) == pytest.approx(float(out.loss), rel=1e-6)


def test_cli_grad_accum_with_a_short_last_micro_batch_equals_one_batch(tiny_model_dir, tmp_path):
    # 94 examples: batch 8 ends with a batch of 6; batch 4 x 2 ends with micro-batches of 4 and 2,
    # which the old mean of means weighed 1:1 instead of 4:2
    runs = {}
    for name, overrides in (("accum", ("trainer.batch_size=4", "trainer.grad_accum=2")), ("one", ())):
        # random batches: length grouping forms micro-batches, so 4 x 2 would group other examples than 8
        proc = run_cli(tiny_model_dir, tmp_path / name, "task.limit_train=94", NO_DROPOUT, "trainer.log_every=1",
                       "task.group_by_length=false",
                       "trainer.save_model=false", *overrides)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = ([r["train/loss"] for r in metrics_rows(tmp_path / name) if "train/loss" in r],
                      read_record(tmp_path / name))
    (accum_losses, accum), (one_losses, one) = runs["accum"], runs["one"]
    assert len(accum_losses) == len(one_losses) == 12
    assert accum_losses == pytest.approx(one_losses, rel=1e-4)
    assert accum["metrics"]["final"]["loss"] == pytest.approx(one["metrics"]["final"]["loss"], rel=1e-4)
    assert math.isfinite(accum["metrics"]["final"]["loss"])
    assert accum["metrics"]["final"]["accuracy"] == one["metrics"]["final"]["accuracy"]


def test_tables_show_mfu_and_cuda_peak_by_default_only_where_measured(tmp_path, capsys):
    src = ROOT / "tests" / "fixtures" / "sweep_lora_vs_full"
    for run in sorted(src.glob("[0-2]_full-seed*")):
        shutil.copytree(run, tmp_path / "cpu" / run.name)
        shutil.copytree(run, tmp_path / "cuda" / run.name)
        rec = json.loads((run / "results.json").read_text())
        rec["throughput"]["mfu"] = 0.3 + 0.01 * rec["seed"]  # 0.30, 0.31, 0.32 -> 0.31 ± 0.01
        rec["memory"]["cuda_peak_allocated_gib"] = 4.0
        (tmp_path / "cuda" / run.name / "results.json").write_text(json.dumps(rec))
    assert table.main([str(tmp_path / "cpu")]) == 0
    header = capsys.readouterr().out.splitlines()[2]
    assert "MFU" not in header and "CUDA" not in header
    assert table.main([str(tmp_path / "cuda")]) == 0
    out = capsys.readouterr().out
    assert "| MFU" in out and "CUDA peak alloc. (GiB)" in out and "0.3100 ± 0.0100" in out
