"""harness.analysis.records: loading results.json and W&B runs, one flattened row per run
(numbers: tests/analysis/sweeps.py)."""

import pytest

from harness import analysis as A
from tests.analysis.sweeps import FIXTURES, LVF, fake_run


def test_load_records_recursive_and_flattened():
    records = A.load_records([FIXTURES])
    assert len(records) == 10 + 2 + 3
    df = A.records_frame(records)
    for column in ("lora.r", "lora.target_modules", "metrics.final.accuracy", "metrics.best.accuracy",
                   "params.trainable", "config.method.lr", "throughput.tokens_per_s", "memory.peak_rss_gib"):
        assert column in df, column
    assert "lora" not in df and "metrics.final" not in df  # null parents of lora.r / failed metrics dropped
    full = df[df["method"] == "full"]
    assert full["lora.r"].isna().all()
    assert set(df.loc[df["method"] == "lora", "lora.target_modules"]) == {"query,value", "query,key,value,dense"}
    assert df["config.method.lr"].dropna().tolist().count(5e-5) == len(full)
    assert (df["metrics.final.main"].dropna() == df["metrics.final.accuracy"].dropna()).all()


def test_load_records_file_and_unreadable(tmp_path):
    bad = tmp_path / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    one = LVF / "0_full-seed0" / "results.json"
    records = A.load_records([one, tmp_path])
    assert [r["status"] for r in records] == ["completed", "unreadable"]
    assert records[0]["path"] == str(one.parent)
    failed = A.failed_runs(A.records_frame(records))
    assert failed["path"].tolist() == [str(bad.parent)] and failed["error"][0].startswith("JSONDecodeError")


def test_load_records_errors(tmp_path):
    with pytest.raises(ValueError, match="no results.json found under"):
        A.load_records([tmp_path])
    with pytest.raises(ValueError, match="no such file or folder"):
        A.load_records([tmp_path / "missing"])


def test_run_record_matches_local_results():
    local = A.load_records([LVF / "3_lora-r4-qv-seed0"])[0]
    record = A.run_record(fake_run(local))
    assert record["path"] == "wandb:ent/proj/abc" and "_step" not in record and "_wandb" not in record["config"]
    assert record["lora"]["target_modules"] == ["query", "value"]
    a = A.records_frame([local]).drop(columns="path").iloc[0]
    b = A.records_frame([record]).drop(columns="path").iloc[0]
    assert a.index.tolist() == b.index.tolist() and a.fillna("").tolist() == b.fillna("").tolist()


def test_run_record_status_from_state_when_summary_has_none():
    local = {k: v for k, v in A.load_records([LVF / "0_full-seed0"])[0].items() if k != "status"}
    assert A.run_record(fake_run(local, state="finished"))["status"] == "completed"
    assert A.run_record(fake_run(local, state="crashed"))["status"] == "crashed"


def test_precision_column_is_what_ran_older_cpu_records_included():
    new = {"device": "cpu", "precision": "bf16", "config": {"trainer": {"precision": "auto"}}}
    old_cpu = {"device": "cpu", "config": {"trainer": {"precision": "bf16"}}}  # bf16 meant CUDA only
    old_gpu = {"device": "NVIDIA H100", "config": {"trainer": {"precision": "bf16"}}}
    failed_early = {"status": "failed"}
    assert [A.ran_precision(r) for r in (new, old_cpu, old_gpu, failed_early)] == ["bf16", "fp32", "bf16", None]
    df = A.records_frame([{**new, "method": "lora"}, {**old_cpu, "method": "lora"}])
    assert df["precision"].tolist() == ["bf16", "fp32"]
