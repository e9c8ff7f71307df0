"""The test that proves the design: every packed job trains exactly as it does alone (dropout off,
fp32 CPU): the same loss curve and final metrics within 1e-4, for a pack mixing r, alpha, lr (LoRA+ ratio),
seed, init, rsLoRA and target modules (a layer adapted by some jobs only), whether the pack runs
one forward over every job's rows (concat) or one per job (per_job)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from harness.pack import run_pack
from tests.helpers import metrics_rows, read_record
from tests.pack.helpers import pack_jobs, run_solo


def curve(run_dir, key):
    return [(r["step"], r[key]) for r in metrics_rows(run_dir) if r.get(key) is not None]


@pytest.fixture(scope="module")
def solo_twins(tiny_model_dir, tmp_path_factory):
    """The MIX jobs run alone, one after another: the reference both forward modes are held to."""
    root = tmp_path_factory.mktemp("solo")
    for i, job in enumerate(pack_jobs(tiny_model_dir, root / "unused")):
        run_solo(job, root / str(i))
    return root


@pytest.mark.parametrize("forward", ["concat", "per_job"])
def test_packed_jobs_equal_their_sequential_twins(tiny_model_dir, tmp_path, solo_twins, forward):
    jobs = pack_jobs(tiny_model_dir, tmp_path / "pack")
    values = run_pack(jobs, pack_id="p0", forward=forward)
    for i, job in enumerate(jobs):
        solo_dir = solo_twins / str(i)
        packed, solo = read_record(job.run_dir), read_record(solo_dir)
        assert packed["status"] == solo["status"] == "completed", (packed["error"], solo["error"])
        assert packed["packed"] == {"size": 3, "pack_id": "p0", "forward": forward} and solo["packed"] is None
        assert packed["lora"] == solo["lora"] and packed["params"] == solo["params"]
        a, b = curve(job.run_dir, "train/loss"), curve(solo_dir, "train/loss")
        assert len(a) == 12 and [s for s, _ in a] == [s for s, _ in b]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-4
        assert [x for _, x in curve(job.run_dir, "train/grad_norm")] == pytest.approx(
            [y for _, y in curve(solo_dir, "train/grad_norm")], abs=1e-4)
        for split in ("final", "best"):
            for key, value in solo["metrics"][split].items():
                assert packed["metrics"][split][key] == pytest.approx(value, abs=1e-4), (i, split, key)
        for key, value in solo["metrics"]["test"]["final"].items():
            assert packed["metrics"]["test"]["final"][key] == pytest.approx(value, abs=1e-4)
        assert values[i] == pytest.approx(solo["metrics"]["final"]["accuracy"], abs=1e-4)
        # the same adapter files, in peft's format
        mine, theirs = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (job.run_dir, solo_dir))
        assert mine.keys() == theirs.keys()
        assert max(float((mine[k] - theirs[k]).abs().max()) for k in mine) < 1e-4
        assert json.loads((job.run_dir / "adapter" / "adapter_config.json").read_text()) == \
            json.loads((solo_dir / "adapter" / "adapter_config.json").read_text())
