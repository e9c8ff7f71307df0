"""bench/: the timing helpers and FLOP count pinned to hand-computed numbers, the LoRA layer
variants against the dense reference, and every script's --quick run (tiny BERT, 1-2 steps)
writing a record whose checks hold. Timings themselves are not asserted: they are not unit-testable."""

import json

import pytest
import torch

from bench import (adapter_switch, common, default_sweep, harness_overhead, lora_layer, merged_inference, packed_sweep, padding, sweep_overhead,
                   train_step)
from harness.lora import LoraConfig, LoraLinear, apply_lora
from harness.train import effective_precision
from harness.tiny import tiny_bert


def test_interleave_rotates_the_order_and_drops_warmup_rounds():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times = common.interleave(fns, steps=2, warmup=1)
    assert calls == list("abc" "bca" "cab")
    assert {n: len(t) for n, t in times.items()} == {"a": 2, "b": 2, "c": 2}
    with pytest.raises(ValueError, match="steps=0"):
        common.interleave(fns, steps=0, warmup=0)


def test_summary_and_paired_ratio_are_exact():
    s = common.summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s["q1"], s["median"], s["q3"], s["n"]) == (2.0, 3.0, 4.0, 5)
    assert s["noise"] == pytest.approx(1 / 3)
    r = common.paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])  # per-round ratios 2, 2, 3
    assert (r["q1"], r["ratio"], r["q3"]) == (2.0, 2.0, 2.5)
    with pytest.raises(ValueError, match="equal"):
        common.paired_ratio([1.0], [1.0, 2.0])


def test_gemm_flops_and_trainable_state_match_a_hand_count():
    # B=2, T=4: 8 token rows per encoder Linear, 2 rows for pooler and classifier.
    # forward GEMMs: per layer 2*8*(4*32*32 + 2*32*37) = 103,424; x2 layers, + pooler 4,096 + classifier 256
    # full FT: every input and weight needs a gradient -> 3 x 211,200; attention 3*4*2*16*32*2 = 24,576
    full = tiny_bert()
    assert train_step.gemm_flops(full, 2, 4) == 3 * 211_200 + 24_576
    # LoRA q+v r=8 + pooler/classifier: layer 0's q/k/v see frozen embeddings (forward only), the rest
    # of the encoder forward + input gradient, heads x3; adapter GEMMs are 4,096 each: A x2 in layer 0 (no
    # input gradient) and x3 in layer 1, B x3
    lora = tiny_bert()
    apply_lora(lora, LoraConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier", "pooler"]))
    expected = 49_152 + 2 * (16_384 + 37_888) + 2 * 103_424 + 3 * (4_096 + 256) + 2 * 20_480 + 2 * 24_576 + 24_576
    assert train_step.gemm_flops(lora, 2, 4) == expected == 492_288
    # trainable: 2 layers x {q, v} x 8 x (32 + 32) adapters + pooler 1,056 + classifier 66; 16 bytes each in fp32
    assert train_step.trainable_state_bytes(lora) == 3_170 * 16


def test_lora_layer_variants_match_dense_and_census_detects_what_it_claims():
    assert lora_layer.check_against_dense("lora") < 1e-10
    assert lora_layer.check_against_dense("loralib") < 1e-10
    torch.manual_seed(0)
    d, r = 48, 8
    plain = lora_layer.op_census(LoraLinear(torch.nn.Linear(d, d), r, 16), d, r)
    assert not plain["dropout_op"] and not plain["ba_materialized"]
    assert lora_layer.op_census(LoraLinear(torch.nn.Linear(d, d), r, 16, dropout=0.1), d, r)["dropout_op"]
    dense = lora_layer.DenseLinear(LoraLinear(torch.nn.Linear(d, d), r, 16))
    assert lora_layer.op_census(dense, d, r)["ba_materialized"]


def _quick(module, tmp_path, *extra):
    out = tmp_path / f"{module.__name__.split('.')[-1]}.json"
    module.main(["--quick", "--threads", "1", "--out", str(out), *extra])
    rec = json.loads(out.read_text())
    assert rec["machine"]["torch_threads"] == 1 and rec["settings"]["quick"] is True
    return {t["title"].split(",")[0].split(":")[0]: t for t in rec["tables"]}


def _rows(table):
    return {row[0]: dict(zip(table["columns"], row)) for row in table["rows"]}


@pytest.mark.slow  # its Memory table comes from one subprocess per config
def test_train_step_quick(tmp_path):
    tables = _quick(train_step, tmp_path, "--plain", "--family")
    rows = _rows(tables["Training step"])
    assert rows["LoRA q+v r=8"]["trainable"] == 3_170  # the tiny BERT of common.tiny_model_dir, as in the CLI tests
    assert rows["full FT"]["x full FT"] == 1.0 and rows["full FT"]["GEMM FLOPs x full"] == 1.0
    assert 0 < rows["LoRA q+v r=8"]["state x full"] < rows["LoRA all-linear r=64"]["state x full"] < 1
    assert set(_rows(tables["Dropout cost"])) >= {"full FT, model dropout off", "LoRA q+v r=8, + LoRA dropout 0.1"}
    assert set(_rows(tables["LoRA layer layout"])) == {
        "LoRA q+v r=8, plain wrapper", "LoRA all-linear r=8, plain wrapper"}
    mem = _rows(tables["Memory"])["full FT"]
    assert mem["peak RSS MiB"] >= mem["RSS built MiB"] > 100
    family = _rows(tables["The LoRA family"])
    # DoRA adds one magnitude per output feature (2 layers x {q, v} x 32); LoRA-FA trains no A (2 x 2 x 8 x 32)
    assert {name: row["trainable"] for name, row in family.items()} == {
        "full FT, model dropout off": rows["full FT"]["trainable"], "LoRA q+v r=8, model dropout off": 3_170,
        "DoRA q+v r=8": 3_170 + 128, "LoRA+ q+v r=8, ratio 16": 3_170, "OLoRA q+v r=8": 3_170,
        "LoRA-FA q+v r=8": 3_170 - 1_024}
    assert family["full FT, model dropout off"]["x full FT"] == 1.0


def test_lora_layer_quick(tmp_path):
    table = _quick(lora_layer, tmp_path)["Structure of one fwd+bwd (torch.profiler); the dense row shows "
                                         "the B@A check can fire"]
    census = {(row[0], row[1]): dict(zip(table["columns"], row)) for row in table["rows"]}
    assert census["LoraLinear", 0.0]["max |diff| vs dense (fp64)"] < 1e-10
    assert census["loralib wrapper", 0.0]["max |diff| vs dense (fp64)"] < 1e-10
    assert not census["LoraLinear", 0.0]["dropout op"] and census["LoraLinear", 0.1]["dropout op"]
    assert census["dense reference", 0.0]["B@A materialized"] and not census["LoraLinear", 0.0]["B@A materialized"]


def test_merged_inference_quick(tmp_path):
    rows = _rows(_quick(merged_inference, tmp_path)["Inference forward"])
    for name in ("LoRA q+v r=8 merged", "LoRA all-linear r=8 merged"):
        assert rows[name]["max |logit diff| merged vs unmerged"] < 1e-5
    assert rows["LoRA q+v r=8 unmerged"]["max |logit diff| vs base"] > 1e-6  # the adapter does change the model


def test_adapter_switch_quick(tmp_path):
    table = _quick(adapter_switch, tmp_path)["Adapter switch on CPU"]
    assert len(table["rows"]) == 8
    assert all(row[5] < 1e-5 for row in table["rows"])  # every way of switching gives the fresh load's logits


def test_padding_quick(tmp_path):
    census = _rows(_quick(padding, tmp_path)["Padding census"])
    real = {r["real tokens"] for r in census.values()}
    assert len(real) == 1  # the same reviews, batched three ways
    frac = [census[n]["real fraction"] for n in ("pad to max_length", "dynamic padding", "dynamic + group_by_length")]
    assert frac[0] < frac[1] <= frac[2] <= 1


def test_harness_overhead_quick(tmp_path):
    rows = _rows(_quick(harness_overhead, tmp_path)["Harness overhead"])
    assert set(rows) == {"harness", "bare", "trainer", "harness, its own StepTimer"}
    # One round: the paired ratio is the two loops' own rates divided, for the harness and the Trainer.
    for loop in ("harness", "trainer"):
        assert rows[loop]["x bare (paired)"] == pytest.approx(rows[loop]["samples/s"] / rows["bare"]["samples/s"])
    assert rows["harness"]["samples/s"] > 0 and rows["harness"]["real tokens/s"] > rows["harness"]["samples/s"]


@pytest.mark.slow  # runs the real CLI's sweep in a subprocess
def test_sweep_overhead_quick(tmp_path):
    tables = _quick(sweep_overhead, tmp_path)
    row = tables["Sweep overhead"]["rows"][0]
    assert row[1] == 4 and row[-1] == "3 files, 0 written after job 0"  # tokenized once, reused by jobs 1-3
    assert len(tables["Per job"]["rows"]) == 4


@pytest.mark.slow  # runs the real CLI's sweeps (sequential, packed, pruned) in subprocesses
def test_packed_sweep_quick(tmp_path):
    tables = _quick(packed_sweep, tmp_path)
    rows = tables["K LoRA jobs (8 steps each)"]["rows"]
    assert [r[:2] for r in rows] == [[2, "sequential"], [2, "packed"]]
    assert rows[1][-1] < 1e-4  # packed twins equal their sequential runs (fp32 CPU)
    search = _rows(tables["8-configuration search (lr 5e-4"])
    assert search["packed + halving"]["pruned"] == 7 and search["packed, to the end"]["pruned"] == 0
    assert search["packed, to the end"]["same best"] is True


@pytest.mark.slow
def test_default_sweep_quick(tmp_path):
    """The harness sweep and its bare-loop twin train the same 4 jobs: same batches, same seeds,
    same model preparation, so the same accuracies (the trainer arms need peft: not run here)."""
    rows = _rows(_quick(default_sweep, tmp_path, "--arms", "harness,bare")["The 4-job sweep"])
    assert set(rows) == {"harness", "bare"}
    rec = json.loads((tmp_path / "default_sweep.json").read_text())
    harness, bare = rec["raw"]["harness"][0], rec["raw"]["bare"][0]
    assert len(harness["accuracy"]) == 4 and harness["accuracy"] == bare["accuracy"]
    # the bare loop autocasts as the harness's default (trainer.precision=auto) does on this machine
    assert harness["precision"] == [effective_precision(torch.device("cpu"), "auto")] * 4
    assert harness["test_accuracy"] == bare["test_accuracy"]  # both score the test split too
    assert harness["loss"] == pytest.approx(bare["loss"], rel=1e-5)
    assert len(set(harness["loss"])) == 4  # four different jobs
    assert harness["wall_s"] > 0 and bare["wall_s"] > 0
