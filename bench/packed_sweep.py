"""Issue 16: the same K-job LoRA sweep run sequentially and packed (`hydra/launcher=packed`), and a
pruned 8-configuration search vs the same 8 run to the end.

Every arm is one real `python -m harness.train -m ...` (MiniLM, Rotten Tomatoes, a fixed step
budget, validation on 256 reviews, no saved weights), so what is measured is what a user gets:

- K = 2, 4, 8 (method.r=4,8 x seeds): sweep wall time, real tokens/s of training (sequential: the
  mean job's; packed: the pack's, i.e. the sum of its jobs' `tokens_per_s`, README "packed sweeps"),
  the largest peak RSS (and CUDA peak) of a job process, and the largest difference between a packed
  job and its sequential twin (validation metrics and every logged train loss);
- the search: method.lr x method.r (4 x 2), sequential to the end, packed to the end, and packed
  with successive halving, `prune={metric: eval/loss, every: steps/8, keep: 0.5, growth: 2}` (rungs
  at 1/8, 1/4 and 1/2 of the budget: 8 -> 4 -> 2 -> 1 jobs, 31% of the job-steps): wall time and
  the best configuration each finds (the best validation accuracy among the jobs that ran to the end).

    python -m bench.packed_sweep                 # the full bench (one GPU: bf16, within 8 minutes)
    python -m bench.packed_sweep --quick         # the tiny model, a few steps: a smoke test
    python -m bench.packed_sweep --steps 320 --ks   # only the search, at one epoch per job
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

SEEDS = {2: "0", 4: "0,1", 8: "0,1,2,3"}
LRS, RANKS = "5e-4,1e-3,2e-3,5e-3", "4,8"


def sweep(overrides: list[str], folder: Path, launcher: list[str] = ()) -> dict:
    """One `harness-train -m` sweep, timed; `launcher`: its launcher overrides (none: the basic one)."""
    env = common.child_env()
    cmd = [sys.executable, "-m", "harness.train", "-m", *overrides, f"hydra.sweep.dir={folder}", *launcher]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    jobs = {}
    for path in folder.glob("*/results.json"):
        record = json.loads(path.read_text())
        key = ",".join(sorted(o for o in record["sweep"]["overrides"] if o.split("=")[0] in ("method.r", "method.lr", "seed")))
        losses = [json.loads(line).get("train/loss") for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
        jobs[key] = {"record": record, "losses": [x for x in losses if x is not None]}
    return {"wall": wall, "jobs": jobs, "command": " ".join(cmd[1:])}


def throughput(out: dict, packed: bool) -> float:
    rates = [j["record"]["throughput"]["tokens_per_s"] for j in out["jobs"].values()]
    return sum(rates) if packed else sum(rates) / len(rates)


def peaks(out: dict) -> tuple[float, float | None]:
    mem = [j["record"]["memory"] for j in out["jobs"].values()]
    cuda = [m.get("cuda_peak_allocated_gib") for m in mem if m.get("cuda_peak_allocated_gib") is not None]
    return max(m["peak_rss_gib"] for m in mem), (max(cuda) if cuda else None)


def largest_difference(a: dict, b: dict) -> float:
    """max |packed - sequential| over the twins' validation metrics and logged train losses."""
    worst = 0.0
    for key, job in a["jobs"].items():
        twin = b["jobs"][key]
        fa, fb = job["record"]["metrics"]["final"], twin["record"]["metrics"]["final"]
        worst = max([worst, *(abs(fa[m] - fb[m]) for m in fa if fa[m] is not None),
                     *(abs(x - y) for x, y in zip(job["losses"], twin["losses"]))])
    return worst


def forward_used(out: dict) -> str:
    """How the packs of a packed sweep ran their forward (the records' packed.forward)."""
    return ",".join(sorted({j["record"]["packed"]["forward"] for j in out["jobs"].values() if j["record"]["packed"]}))


def best_config(out: dict) -> str:
    done = {k: j["record"]["metrics"]["final"]["accuracy"] for k, j in out["jobs"].items()
            if j["record"]["status"] == "completed"}
    return max(done, key=done.get)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per job (default 200)")
    parser.add_argument("--ks", type=int, nargs="*", default=[2, 4, 8], choices=[2, 4, 8],
                        help="pack sizes of the K table (default 2 4 8; none: only the search)")
    parser.add_argument("--no-search", action="store_true", help="skip the 8-configuration search")
    parser.add_argument("--forward", choices=["auto", "concat", "per_job"], default="auto",
                        help="the packs' hydra.launcher.forward (default auto: concat on CUDA, per_job on CPU)")
    args = parser.parse_args(argv)
    launcher = ["hydra/launcher=packed", f"hydra.launcher.forward={args.forward}"]
    base = ["task.limit_eval=256", "trainer.save_model=false", "trainer.eval_every=null", "trainer.log_every=1",
            f"trainer.max_steps={args.steps}"]
    if args.quick:
        args.steps, args.ks = 8, [2]  # 8 steps: rungs at 1, 2 and 4 prune 7 of 8
        base = ["task.limit_train=64", "task.limit_eval=16", "trainer.batch_size=8", "trainer.save_model=false",
                "trainer.log_every=1", "trainer.max_steps=8", f"model.name_or_path={common.tiny_model_dir()}",
                "model.name=tiny_bert"]
    common.apply_threads(args.threads)  # this process and, through OMP_NUM_THREADS, every sweep's jobs
    record = common.Record("packed_sweep", {"base": base, "ks": args.ks, "steps": args.steps, "quick": args.quick,
                                            "launcher": launcher}, argv)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed: the first sweep of a fresh machine also tokenizes the data into the cache and
        # pages the checkpoint in; without this the first timed arm pays for every later one.
        sweep([o for o in base if not o.startswith("trainer.max_steps=")] + ["trainer.max_steps=1"],
              Path(tmp, "warmup"))
        for k in args.ks:
            grid = [f"method.r={'8' if k == 2 else RANKS}", f"seed={SEEDS[k]}" if k != 2 else "seed=0,1"]
            seq = sweep(base + grid, Path(tmp, f"seq{k}"))
            pack = sweep(base + grid, Path(tmp, f"pack{k}"), launcher)
            diff = largest_difference(pack, seq)
            forward = forward_used(pack)
            raw[f"k{k}"] = {"sequential_wall": seq["wall"], "packed_wall": pack["wall"], "difference": diff}
            for name, out, packed in (("sequential", seq, False), ("packed", pack, True)):
                rss, cuda = peaks(out)
                rows.append([k, name, out["wall"], seq["wall"] / out["wall"], throughput(out, packed), rss, cuda,
                             diff if packed else None])
        if rows:
            record.table(f"K LoRA jobs ({args.steps} steps each), sequential vs packed (forward: {forward})",
                         ["K", "launcher", "sweep wall s", "speed-up", "real tokens/s", "peak RSS GiB",
                          "CUDA peak GiB", "max |packed - sequential|"], rows,
                         note="real tokens/s: sequential = a job's own; packed = the pack's (sum of its jobs'); "
                              "difference over validation metrics and every logged train loss")
        if not args.no_search:
            search(base, args.steps, Path(tmp), record, raw, launcher)
    record.data["raw"] = raw
    record.write(args.out)


def search(base: list[str], steps: int, tmp: Path, record, raw: dict, launcher: list[str]) -> None:
    """The 8-configuration search three ways: sequential, packed, packed with successive halving."""
    every = max(1, steps // 8)
    grid = [f"method.lr={LRS}", f"method.r={RANKS}"]
    prune = f"hydra.launcher.prune={{metric: eval/loss, every: {every}, keep: 0.5, growth: 2}}"
    arms = {"sequential, to the end": sweep(base + grid, tmp / "s_seq"),
            "packed, to the end": sweep(base + grid, tmp / "s_pack", launcher),
            "packed + halving": sweep(base + grid + [prune], tmp / "s_prune", launcher)}
    reference = best_config(arms["sequential, to the end"])
    rows = []
    for name, out in arms.items():
        best = best_config(out)
        statuses = [j["record"]["status"] for j in out["jobs"].values()]
        rows.append([name, out["wall"], out["wall"] / arms["sequential, to the end"]["wall"],
                     out["wall"] / arms["packed, to the end"]["wall"], statuses.count("pruned"), best,
                     best == reference])
        raw[name] = {"wall": out["wall"], "best": best, "command": out["command"]}
    record.table(f"8-configuration search (lr {LRS} x r {RANKS}), successive halving at steps {every}, {2 * every}, "
                 f"{4 * every}; packs' forward: {forward_used(arms['packed, to the end'])}",
                 ["arm", "wall s", "x sequential", "x packed to the end", "pruned", "best config", "same best"], rows)


if __name__ == "__main__":
    main()
