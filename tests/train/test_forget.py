"""A causal-LM run with the forgetting probe: metrics.forget in results.json, the before value
being the pretrained model's own perplexity, and the forget/* rows of the curve."""

import pytest
import torch

from harness.data import ForgetConfig, general_chunks
from tests.helpers import hf_perplexity, metrics_rows, read_record, run_cli
from tests.telemetry.wandb_offline import read_offline_run


@pytest.mark.slow
def test_a_lora_run_records_forgetting_before_and_after(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / "run"
    proc = run_cli(tiny_llama_dir, run_dir, "task=chatterbot", "model.name=tiny_llama", "model.head_modules=[]",
                   "method.target_modules=all-linear", "task.forget.limit=6", "task.forget.batch_size=4",
                   "trainer.select_best=true", "trainer.eval_every=4", f"paths.cache_dir={tmp_path / 'cache'}",
                   "logger=wandb", "logger.mode=offline")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_record(run_dir)
    forget = rec["metrics"]["forget"]
    # Independently: the saved base model (LoRA's B = 0 at the start) scored chunk by chunk by its own loss.
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    chunks = general_chunks(ForgetConfig(limit=6), AutoTokenizer.from_pretrained(tiny_llama_dir), "ref", tmp_path)
    expected, _ = hf_perplexity(base, chunks)
    assert forget["before"]["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert forget["tokens"] == sum(n - 1 for n in chunks["length"]) and forget["chunks"] == 6
    final = forget["final"]
    assert final["perplexity"] != pytest.approx(forget["before"]["perplexity"], rel=1e-4)  # training moved it
    assert final["perplexity_increase"] == pytest.approx(final["perplexity"] - forget["before"]["perplexity"])
    assert forget["best_step"] == rec["metrics"]["best_step"] == rec["metrics"]["test"]["best_step"]
    assert forget["best"]["perplexity_increase"] == pytest.approx(forget["best"]["perplexity"] - forget["before"]["perplexity"])
    if forget["best_step"] == rec["steps"]:
        assert forget["best"] == final
    rows = [r for r in metrics_rows(run_dir) if "forget/perplexity" in r]
    assert [r["step"] for r in rows] == [0, rec["steps"]]
    assert rows[0]["forget/perplexity"] == pytest.approx(forget["before"]["perplexity"])
    assert rows[1]["forget/perplexity"] == pytest.approx(final["perplexity"])
    assert torch.isfinite(torch.tensor(final["nll"]))
    # W&B mirrors it: the entry in the run summary, the rows in the history
    (wandb_run,) = [read_offline_run(p) for p in (run_dir / "wandb").glob("offline-run-*")]
    assert wandb_run.summary["metrics"]["forget"] == forget
    history = [r["forget/perplexity"] for r in wandb_run.history if "forget/perplexity" in r]
    assert history == pytest.approx([r["forget/perplexity"] for r in rows])


@pytest.mark.slow
def test_forget_null_leaves_the_probe_out(tiny_llama_dir, tmp_path):
    proc = run_cli(tiny_llama_dir, tmp_path / "run", "task=chatterbot", "model.name=tiny_llama", "model.head_modules=[]",
                   "task.forget=null", "trainer.max_steps=2", f"paths.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_record(tmp_path / "run")
    assert "forget" not in rec["metrics"] and rec["config"]["task"]["forget"] is None


CAUSAL = ("task=chatterbot", "model.name=tiny_llama", "model.head_modules=[]", "task.forget.limit=6")
# Slow enough to interrupt (tests/train/test_checkpoint.py): an evaluation after every one of 24 steps.
SLOW = ("task.limit_train=96", "trainer.epochs=2", "task.limit_eval=16", "trainer.eval_every=1",
        "trainer.checkpoint_every=4", "trainer.log_every=1", "trainer.save_model=false")


@pytest.mark.slow
def test_a_preempted_run_keeps_its_before_value_through_the_checkpoint(tiny_llama_dir, tmp_path):
    """The pretrained model is gone once training started: a resumed run takes `before` from the
    checkpoint and ends with the uninterrupted run's numbers, each forget row once in the curve."""
    import signal

    from tests.train.test_checkpoint import start, wait_for

    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    reference = tmp_path / "reference"
    # The reference needs no evaluation after every step (that only makes the run slow enough to interrupt).
    proc = run_cli(tiny_llama_dir, reference, *CAUSAL, *SLOW, cache, "trainer.eval_every=null")
    assert proc.returncode == 0 and "forget probe @ step 0" in proc.stdout + proc.stderr
    run_dir = tmp_path / "preempted"
    proc = start(tiny_llama_dir, run_dir, *CAUSAL, cache, slow=SLOW)
    wait_for(run_dir / "checkpoints" / "step_0000004", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1 and read_record(run_dir)["status"] == "preempted"
    resumed = run_cli(tiny_llama_dir, run_dir, *CAUSAL, *SLOW, cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "forget probe @ step 0" not in resumed.stdout + resumed.stderr  # not probed again after the start
    want, got = read_record(reference)["metrics"]["forget"], read_record(run_dir)["metrics"]["forget"]
    assert got["before"] == want["before"] and got["final"] == pytest.approx(want["final"], rel=1e-6)
    assert [r["step"] for r in metrics_rows(run_dir) if "forget/perplexity" in r] == [0, 24]
