"""trainer.precision: what auto resolves to on each kind of hardware, that bf16 really computes in
bf16 (and the loss in fp32), and that the record says which precision ran."""

import pytest
import torch

from harness.config import ConfigError
from harness.scoring import summed_loss
from harness.train import attention_for, autocast, effective_precision
from harness.train import runtime
from tests.helpers import TINY_RUN, read_record, run_cli

CPU = torch.device("cpu")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                         (False, False, "fp32")])
def test_auto_is_bf16_exactly_on_cpus_with_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert effective_precision(CPU, "auto") == expected
    assert effective_precision(CPU, "bf16") == "bf16" and effective_precision(CPU, "fp32") == "fp32"
    assert (autocast(CPU, "auto") is runtime.contextlib.nullcontext) == (expected == "fp32")


def test_auto_on_cuda_follows_the_gpus_bf16_support(monkeypatch):
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert effective_precision(torch.device("cuda"), "auto") == expected


def test_bf16_runs_the_matmuls_in_bf16_and_the_loss_in_fp32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    with autocast(CPU, "bf16")():
        logits = model(x)
    loss = summed_loss("classification", logits, labels)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    with autocast(CPU, "fp32")():
        reference = model(x)
    assert reference.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: close to the fp32 logits, not equal to them
    assert 0 < (logits.float() - reference).abs().max() < 0.05
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())  # fp32 weights and gradients


def test_a_bad_precision_is_one_line():
    from harness.config import TrainerConfig

    with pytest.raises(ConfigError, match=r"trainer\.precision='fp16' is invalid: choose auto, bf16 or fp32"):
        TrainerConfig(precision="fp16")


@pytest.mark.slow
def test_the_record_says_which_precision_ran_and_bf16_changes_the_numbers_a_little(tiny_model_dir, tmp_path):
    tiny = [o for o in TINY_RUN if not o.startswith("trainer.precision=")]
    records = {}
    for precision in ("fp32", "bf16", "auto"):
        proc = run_cli(tiny_model_dir, tmp_path / precision, f"trainer.precision={precision}",
                       "trainer.save_model=false", "trainer.device=cpu", tiny=tiny)
        assert proc.returncode == 0, proc.stderr[-2000:]
        records[precision] = read_record(tmp_path / precision)
    assert records["fp32"]["precision"] == "fp32" and records["bf16"]["precision"] == "bf16"
    assert records["auto"]["precision"] == effective_precision(CPU, "auto")
    assert records["auto"]["config"]["trainer"]["precision"] == "auto"
    fp32, bf16 = (records[p]["metrics"]["final"]["loss"] for p in ("fp32", "bf16"))
    assert fp32 != bf16 and abs(fp32 - bf16) < 0.05 * fp32


@pytest.mark.parametrize("choice, device, precision, expected", [
    (None, "cpu", "bf16", "eager"),   # torch's CPU flash-attention backward is slow in bf16
    (None, "cpu", "fp32", None),      # transformers' default
    (None, "cuda", "bf16", None),
    ("sdpa", "cpu", "bf16", "sdpa"),  # an explicit choice wins
    ("eager", "cpu", "fp32", "eager"),
])
def test_automatic_attention_is_eager_exactly_where_a_cpu_run_autocasts_to_bf16(choice, device, precision, expected):
    assert attention_for(choice, torch.device(device), precision) == expected


@pytest.mark.slow
def test_the_record_names_the_attention_that_ran(tiny_model_dir, tmp_path):
    tiny = [o for o in TINY_RUN if not o.startswith("trainer.precision=")]
    for precision, attention, expected in (("bf16", "null", "eager"), ("fp32", "null", "sdpa"), ("bf16", "sdpa", "sdpa")):
        run_dir = tmp_path / f"{precision}-{attention}"
        proc = run_cli(tiny_model_dir, run_dir, f"trainer.precision={precision}", f"model.attn_implementation={attention}",
                       "trainer.save_model=false", "trainer.device=cpu", "trainer.max_steps=2", tiny=tiny)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert read_record(run_dir)["attention"] == expected
