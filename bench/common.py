"""Shared plumbing for the bench/ scripts: paired timing, the machine, tables, the JSON record.

Why paired timing: on a shared machine two processes running the same config disagree by up to
36%, so a ratio of two separately timed configs measures the neighbours, not the code. Every time
ratio here comes from `interleave`, which runs the configs one step each, in turn, in one process
(the order rotating every round), and takes the median of >= 10 steps after warm-up. Only peak
memory, which a shared process cannot give per config, comes from separate processes (`run_child`).

Each script writes `bench/results/<name>.json` (`write_record`): the machine, the command, the
settings, every table and the raw step times. `python -m bench.common bench/results/<name>.json`
prints that record's tables as Markdown, which is how bench/README.md gets them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from harness.analysis import markdown_table
from harness.telemetry import peak_bf16_flops, peak_rss_gib

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
GIB = 1024**3
MIB = 1024**2



# ------------------------------------------------------------------------------------------ timing


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work, so a timer measures the kernels and not their launch."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def interleave(fns: dict[str, Callable[[], object]], steps: int, warmup: int,
               device: torch.device | str | None = None) -> dict[str, list[float]]:
    """Seconds per call of each fn, the configs alternating call by call in this one process.

    Round i runs every fn once, starting at config i mod n (so no config always follows the same
    one); the first `warmup` rounds are dropped (allocator growth, kernel choice, lazy init).
    Returns {name: [seconds of each timed round]}, rounds aligned across names for paired ratios.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps}, warmup={warmup}: need steps >= 1 and warmup >= 0")
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + steps):
        for name in names[i % len(names):] + names[: i % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def quantiles(xs: Sequence[float]) -> tuple[float, float, float]:
    """(25th, 50th, 75th) percentile; one value repeats for a single sample."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def summarize(xs: Sequence[float]) -> dict:
    """Median and spread of step times: `noise` is the half interquartile range / median."""
    q1, med, q3 = quantiles(xs)
    return {"median": med, "q1": q1, "q3": q3, "noise": (q3 - q1) / 2 / med if med else None, "n": len(xs)}


def paired_ratio(xs: Sequence[float], ref: Sequence[float]) -> dict:
    """Median of the per-round ratios xs[i] / ref[i] (a load spike hits both sides of one round),
    with the interquartile range of those ratios as the spread."""
    if len(xs) != len(ref) or not xs:
        raise ValueError(f"paired_ratio needs equal, non-empty rounds; got {len(xs)} and {len(ref)}")
    q1, med, q3 = quantiles([a / b for a, b in zip(xs, ref)])
    return {"ratio": med, "q1": q1, "q3": q3}


# ------------------------------------------------------------------------------------- the machine


def machine() -> dict:
    """What the numbers depend on: CPU, cores, threads, load, torch, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "tiny_matmul_ms": tiny_matmul_ms(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
    }


def tiny_matmul_ms() -> float:
    """Median time of a (32, 8) @ (8, 32) matmul: ~0.002 ms on an idle core. On an oversubscribed
    machine every parallel region waits for a descheduled OpenMP thread, and this reads 5-16 ms;
    then each op pays that wait, op count swamps FLOPs, and `--threads 1` gives meaningful ratios."""
    a, b = torch.randn(32, 8), torch.randn(8, 32)
    ts = []
    for _ in range(25):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts[5:]) * 1e3


def apply_threads(threads: int | None) -> None:
    """--threads N: torch intra-op threads (children and sweep jobs inherit it via OMP_NUM_THREADS)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads={threads}: must be >= 1")
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    ms = tiny_matmul_ms()
    if ms > 1.0:
        print(f"warning: a tiny matmul takes {ms:.1f} ms with {torch.get_num_threads()} threads (idle: ~0.002 ms): "
              f"the cores are oversubscribed and every op waits for a thread; consider --threads 1", file=sys.stderr)


def machine_line(m: dict) -> str:
    gpu = f", GPU {m['cuda_device']}" if m.get("cuda_device") else ", no GPU"
    return (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
            f"load {m['load_avg_1m']:.1f}, tiny matmul {m['tiny_matmul_ms']:.3f} ms{gpu}, torch {m['torch']}")


def mfu(flops_per_step: float, step_s: float, device_name: str | None) -> float | None:
    """Achieved FLOP/s over the device's dense bf16 peak (None on CPU); the peaks are the harness's
    own table (harness.telemetry.PEAK_BF16_FLOPS), which results.json's `throughput.mfu` uses."""
    peak = peak_bf16_flops(device_name)
    return flops_per_step / step_s / peak if peak and step_s else None


def peak_rss_mib() -> float:
    """Peak resident set size of this process: the harness's own measure (VmHWM on Linux), in MiB."""
    return peak_rss_gib() * GIB / MIB


def rss_mib() -> float:
    """Resident set size of this process now."""
    import psutil

    return psutil.Process().memory_info().rss / MIB


def cuda_peaks_mib() -> dict:
    if not torch.cuda.is_available():
        return {"cuda_peak_allocated_mib": None, "cuda_peak_reserved_mib": None}
    return {"cuda_peak_allocated_mib": torch.cuda.max_memory_allocated() / MIB,
            "cuda_peak_reserved_mib": torch.cuda.max_memory_reserved() / MIB}


def child_env(extra_path: str | None = None) -> dict:
    """The environment a bench runs the harness's CLI in: offline, no W&B key, quiet tokenizers;
    `extra_path` (e.g. peft for the Trainer arms) goes on PYTHONPATH after the repository."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_SILENT="true",
               TOKENIZERS_PARALLELISM="false")
    env.pop("WANDB_API_KEY", None)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), extra_path, env.get("PYTHONPATH")) if p)
    return env


def run_child(module: str, args: Sequence[str], timeout: float = 600) -> dict:
    """Run `python -m module *args` from the repository root; it must print one JSON object as its
    last stdout line, which is returned. A fresh process is the only clean peak-memory reading."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child `{module} {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------ the model and data the harness uses


def model_config(quick: bool = False):
    """conf/model/minilm.yaml; with quick, the same config pointing at `tiny_model_dir()`."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "minilm.yaml")
    if quick:
        cfg.name, cfg.name_or_path = "tiny_bert", str(tiny_model_dir())
    return cfg


def task_config(**overrides):
    """conf/task/rotten_tomatoes.yaml (the default task) with overrides."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "task" / "rotten_tomatoes.yaml"), overrides)


def tiny_model_dir() -> Path:
    """A 2-layer, 32-wide random BERT with the packaged MiniLM tokenizer, saved once per machine
    under the system temp folder: what --quick runs use so a smoke test takes seconds."""
    import tempfile

    from harness.tiny import save_tiny

    return save_tiny("bert", Path(tempfile.gettempdir()) / "lora-harness-bench-tiny-bert", max_position_embeddings=512)


def method_config(name: str, **overrides):
    """The harness's typed MethodConfig from conf/method/<lora|full>.yaml plus overrides
    (e.g. target_modules="all-linear", r=64), validated exactly as a run validates it."""
    from omegaconf import OmegaConf

    from harness.config import MethodConfig
    from harness.schema import typed

    if name not in ("lora", "full"):
        raise ValueError(f"method={name!r}: choose lora or full")
    node = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "method" / f"{name}.yaml"), overrides)
    return typed("method", MethodConfig, node)


def trainer_config(**overrides):
    """The harness's TrainerConfig from conf/trainer/default.yaml (fused AdamW included)."""
    from omegaconf import OmegaConf

    from harness.config import TrainerConfig
    from harness.schema import typed

    node = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml"), overrides)
    return typed("trainer", TrainerConfig, node)


def quiet_transformers() -> None:
    """transformers prints a load report (missing classifier weights) per model; the tables matter here."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_model(method, model_cfg, device: torch.device | str = "cpu", seed: int = 0, optimizer: bool = True,
                attn_implementation: str | None = None):
    """(model, optimizer or None) exactly as harness.train.fit builds them: the packaged model with
    a 2-label head (and `attn_implementation`, None: transformers' default), `prepare_model` (LoRA
    adapters + head_modules, or everything for full FT), and `build_optimizer` with
    conf/trainer/default.yaml (fused AdamW for both methods)."""
    from omegaconf import OmegaConf

    from harness.models import load_model
    from harness.train import build_optimizer, prepare_model

    torch.manual_seed(seed)
    model = load_model(model_cfg, "classification", 2, attn_implementation=attn_implementation)
    prepare_model(OmegaConf.create({"model": OmegaConf.to_container(model_cfg)}), method, model)
    model.to(device)
    if not optimizer:
        return model, None
    opt = build_optimizer(trainer_config(), model, method.lr, method.lr_ratio)
    if not all(g.get("fused") for g in opt.param_groups):
        raise RuntimeError("the optimizer is not fused AdamW; the LoRA vs full comparison needs it on both sides")
    return model, opt


def set_model_dropout(model: torch.nn.Module, p: float) -> None:
    """Set every nn.Dropout outside the LoRA adapters (BERT: hidden and attention-prob dropout)."""
    from harness.lora import LoraLinear

    inside_lora = {id(m.dropout) for m in model.modules() if isinstance(m, LoraLinear)}
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and id(m) not in inside_lora:
            m.p = p  # BERT's attention passes `self.dropout.p` to SDPA, so this covers it too


def packed_batches(tokenizer, batch_size: int, seq_len: int, n: int, seed: int = 0) -> list[dict]:
    """`n` batches of (batch_size, seq_len) token ids cut from the concatenated Rotten Tomatoes train
    reviews ([CLS] review [SEP] [CLS] review [SEP] ...): real text with no padding, so every
    position is a real token and a sequence length is exactly the compute it names."""
    from harness.data import build_task

    task = build_task(task_config(), tokenizer, seed=seed)
    need = n * batch_size * seq_len
    stream: list[int] = []
    labels: list[int] = []
    for ids, label in zip(task.train["input_ids"], task.train["labels"]):
        stream += ids
        labels.append(label)
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise ValueError(f"batch_size={batch_size} x seq_len={seq_len} x n={n} needs {need} tokens; the train split "
                         f"has {len(stream)}")
    ids = torch.tensor(stream[:need]).view(n, batch_size, seq_len)
    lab = torch.tensor((labels * (need // max(1, len(labels)) + 1))[: n * batch_size]).view(n, batch_size)
    return [{"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i]), "labels": lab[i]} for i in range(n)]


# ---------------------------------------------------------------------------------- tables and JSON


def fmt(value, digits: int = 3) -> str:
    """Compact cell text: None -> '-', floats to `digits` significant figures, ints with commas."""
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence], note: str | None = None) -> None:
    """A console table (rich when installed, else aligned text). Cells are formatted with `fmt`."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]
        print(f"\n{title}")
        print("  ".join(str(h).rjust(w) for h, w in zip(columns, widths)))
        for r in cells:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    else:
        table = Table(title=title, title_justify="left")
        for h in columns:
            table.add_column(str(h), justify="right")
        for r in cells:
            table.add_row(*r)
        widths = [max(len(str(h)), *(len(r[i]) for r in cells)) + 3 for i, h in enumerate(columns)]
        Console(width=max(80, sum(widths) + 4)).print(table)
    if note:
        print(note)


class Record:
    """Everything one bench run measured; `table` prints a table and keeps it for the JSON file."""

    def __init__(self, name: str, settings: dict, argv: Sequence[str] | None = None):
        self.name = name
        argv = sys.argv[1:] if argv is None else argv
        self.data = {
            "name": name,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m bench." + name + "".join(" " + shlex.quote(str(a)) for a in argv),
            "machine": machine(), "settings": settings, "tables": [], "raw": {},
        }
        self._t0 = time.perf_counter()

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence], note: str | None = None) -> None:
        print_table(title, columns, rows, note)
        self.data["tables"].append({"title": title, "columns": list(columns),
                                    "rows": [list(r) for r in rows], "note": note})

    def write(self, path: str | Path | None = None) -> Path:
        """Write the record (atomically) to `path`, default bench/results/<name>.json."""
        self.data["wall_s"] = time.perf_counter() - self._t0
        self.data["machine"]["load_avg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        path = Path(path) if path else RESULTS_DIR / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float) + "\n")
        os.replace(tmp, path)
        print(f"\n{machine_line(self.data['machine'])}; {self.data['wall_s']:.0f} s wall\nwrote {path}")
        return path


def markdown(record: dict) -> str:
    """The tables of a written record as Markdown, headed by date, machine and command."""
    m = record["machine"]
    out = [f"Measured {record['date']} on {machine_line(m)} (load {m.get('load_avg_1m_end', 0) or 0:.1f} at the end), "
           f"{record.get('wall_s', 0):.0f} s:", "", f"    {record['command']}", ""]
    for t in record["tables"]:
        out += [f"**{t['title']}**", "", markdown_table(t["columns"], t["rows"], number=fmt), ""]
        if t.get("note"):
            out += [t["note"], ""]
    return "\n".join(out)


def add_common_args(parser, steps: int | None = None, warmup: int | None = None) -> None:
    """--quick / --out / --threads for every script; --steps / --warmup for those that interleave."""
    if steps is not None:
        parser.add_argument("--steps", type=int, default=steps, help=f"timed rounds per config (default {steps})")
        parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed rounds first (default {warmup})")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and 2 steps: a smoke test of the script, not a measurement")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/<name>.json)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); use 1 on an oversubscribed machine")


def main(argv: Sequence[str] | None = None) -> None:
    """python -m bench.common RECORD.json ...: print each record's tables as Markdown."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        raise SystemExit("usage: python -m bench.common bench/results/<name>.json [...]")
    for p in paths:
        print(markdown(json.loads(Path(p).read_text())))


if __name__ == "__main__":
    main()
