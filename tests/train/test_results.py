"""The run folder's files: records written redacted, and each attempt's record with its own curve.

These drive harness.results directly (no training) through the sequences the CLI tests in
test_checkpoint.py cannot afford to run all of: a re-run over a completed record that is preempted,
then resumed and completed; a curve left by a run killed before its first checkpoint.
"""

import json

from harness.results import (ATTEMPTS, CURVE, FAILED, RESULTS, Attempt, finish_attempt, fresh_attempt, read_results,
                             write_results)
from harness.telemetry import REDACTED

TOKEN = "hf_" + "Xy7" * 12


def rows(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def write_curve(path, steps):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in steps))


def test_write_results_redacts_the_whole_record_and_never_replaces_a_completed_one(tmp_path):
    record = {"status": "completed", "sweep": {"overrides": [f"+model.token={TOKEN}", "seed=0"]},
              "traceback": f"OSError: 401 for token {TOKEN}", "config": {"model": {"token": "plain"}}}
    assert write_results(tmp_path, record) == tmp_path / RESULTS
    text = (tmp_path / RESULTS).read_text()
    assert TOKEN not in text and "plain" not in text
    assert read_results(tmp_path)["sweep"]["overrides"] == [f"+model.token={REDACTED}", "seed=0"]
    assert record["sweep"]["overrides"][0].endswith(TOKEN)  # the caller's record is not modified
    assert write_results(tmp_path, {"status": "failed"}) == tmp_path / FAILED
    assert read_results(tmp_path)["status"] == "completed"


def test_a_preempted_rerun_over_a_completed_record_resumes_and_replaces_it(tmp_path):
    write_curve(tmp_path / CURVE, [1, 2])
    write_results(tmp_path, {"status": "completed", "attempt": 1})
    first = {name: (tmp_path / name).read_text() for name in (RESULTS, CURVE)}

    number, curve = fresh_attempt(tmp_path)
    assert (number, curve) == (2, tmp_path / ATTEMPTS / "2" / CURVE)  # the completed pair stays in place
    write_curve(curve, [1])
    attempt = Attempt(tmp_path, number, curve, "abcd1234")
    assert finish_attempt(tmp_path, attempt, {"status": "preempted"}) == tmp_path / FAILED
    assert {name: (tmp_path / name).read_text() for name in first} == first
    assert read_results(tmp_path, FAILED)["attempt"] == 2

    write_curve(curve, [1, 2, 3])  # the same attempt, continued from its checkpoint
    assert finish_attempt(tmp_path, attempt, {"status": "completed"}) == tmp_path / RESULTS
    assert read_results(tmp_path)["attempt"] == 2 and rows(tmp_path / CURVE) == [1, 2, 3]
    assert not (tmp_path / FAILED).exists()  # its own preempted segment, superseded
    assert {name: (tmp_path / ATTEMPTS / "1" / name).read_text() for name in first} == first
    assert sorted(p.name for p in (tmp_path / ATTEMPTS).iterdir()) == ["1"]


def test_curves_without_a_completed_record_are_set_aside_in_order(tmp_path):
    write_curve(tmp_path / CURVE, [1, 2])  # attempt 1 failed
    write_results(tmp_path, {"status": "failed", "attempt": 1})
    assert fresh_attempt(tmp_path) == (2, tmp_path / CURVE)
    write_curve(tmp_path / CURVE, [1, 2, 3])  # attempt 2 killed before its first checkpoint: no record
    (tmp_path / "checkpoints" / "step_0000003").mkdir(parents=True)  # and one unreadable checkpoint
    assert fresh_attempt(tmp_path) == (3, tmp_path / CURVE)
    assert not (tmp_path / CURVE).exists() and not (tmp_path / RESULTS).exists()
    assert rows(tmp_path / ATTEMPTS / "1" / CURVE) == [1, 2]
    assert read_results(tmp_path / ATTEMPTS / "1")["status"] == "failed"
    assert rows(tmp_path / ATTEMPTS / "2" / CURVE) == [1, 2, 3]
    assert (tmp_path / ATTEMPTS / "2" / "checkpoints" / "step_0000003").is_dir()
