"""`harness-analyze RUN_DIR...`: the low-rank structure of finished runs' updates (LoRA paper, section 7).

Reads each run's results.json and what it saved (`trainer.save_model=true`: LoRA runs their
`adapter/` in peft's format, full-FT runs their `model/` folder), rebuilds the pretrained base from
the recorded model config, and writes into --out:

    spectra.csv          per run and layer: ||dW||_F, top singular value, energy rank, entropy rank
    singular_values.csv  per run and layer: every singular value of dW (long format)
    similarity.csv       per pair of LoRA runs and selected layer: phi(A1, A2, i, j) for every i, j,
                         beside the random baseline max(i, j) / d
    similarity_*.png     the heatmaps (the paper's Figures 3-4)
    amplification.csv    per run and selected layer: ||U^T W V^T||_F along dW's, W's own and random
                         top-r directions, and the amplification factor (the paper's Table 7)
    spectra.png          normalised singular values of the selected layers, LoRA vs full FT

dW is `scaling * B @ A` for LoRA (what merging adds to W) and `W_finetuned - W_pretrained` for
full fine-tuning. The definitions are those of harness/lowrank.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from harness import lowrank
from harness.analysis import markdown_table
from harness.lora import PREFIX, lora_config_from_peft, read_adapter
from harness.models import load_model

DEFAULT_LAYERS = r".*\.3\.attention\.self\.(query|value)"  # q and v of MiniLM-L6's middle layer


class RunError(ValueError):
    """A run folder that cannot be analysed; the message names the folder and what is missing."""


def _record(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: no results.json (not a finished run folder)")
    record = json.loads(path.read_text())
    if record.get("status") != "completed":
        raise RunError(f"{run_dir}: status={record.get('status')!r}; only completed runs are analysed")
    return record


def _base(record: dict) -> torch.nn.Module:
    cfg = record["config"]
    kind = cfg["task"].get("kind", "classification")
    return load_model(OmegaConf.create(cfg["model"]), kind, num_labels=None if kind == "causal_lm" else 2)


def _weight(module: torch.nn.Module) -> torch.Tensor:
    """A layer's W as (d_out, d_in) in float64: transformers' Conv1D stores (d_in, d_out)."""
    w = module.weight.detach().double()
    return w.T if type(module).__name__ == "Conv1D" else w


def lora_updates(run_dir: Path, base: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{layer: (W0, dW, A)} from a LoRA run's adapter folder."""
    folder = run_dir / "adapter"
    if not folder.is_dir():
        raise RunError(f"{run_dir}: no adapter/ folder (was it trained with trainer.save_model=false?)")
    config, tensors = read_adapter(folder)
    cfg = lora_config_from_peft(config, folder)
    out = {}
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            continue
        layer = key[len(PREFIX):-len(".lora_A.weight")]
        a, b = tensors[key].double(), tensors[key.replace("lora_A", "lora_B")].double()
        dw = cfg.scaling_for(layer) * b @ a
        out[layer] = (_weight(base.get_submodule(layer)), dw, a)
    return out


def full_updates(run_dir: Path, base: torch.nn.Module, kind: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, None]]:
    """{layer: (W0, dW, None)} for every linear layer of a full-FT run's saved model."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    folder = run_dir / "model"
    if not (folder / "config.json").is_file():
        raise RunError(f"{run_dir}: no model/ folder (was it trained with trainer.save_model=false?)")
    auto = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
    tuned = dict(auto.from_pretrained(folder).named_modules())
    out = {}
    for name, module in base.named_modules():
        if type(module).__name__ not in ("Linear", "Conv1D") or name not in tuned:
            continue
        if "classifier" in name or name.endswith("lm_head"):
            continue  # the task head is new, not an update of a pretrained W
        w0 = _weight(module)
        out[name] = (w0, _weight(tuned[name]) - w0, None)
    return out


def describe(run_dir: Path, record: dict) -> dict:
    method = record["config"]["method"]
    label = "full FT" if method["name"] == "full" else f"LoRA r={method['r']}"
    return {"run": run_dir.name, "label": f"{label} seed {record['seed']}", "method": method["name"],
            "r": method.get("r") if method["name"] != "full" else None, "seed": record["seed"]}


def analyze(run_dirs: list[Path], out: Path, layers: str = DEFAULT_LAYERS, fraction: float = 0.9,
            full_ranks: tuple[int, ...] = (4, 64)) -> dict[str, Path]:
    """Write every table and figure of the module docstring; returns {name: path}."""
    pattern = re.compile(layers)
    out.mkdir(parents=True, exist_ok=True)
    runs, spectra, values, amp = [], [], [], []
    bases: dict[str, torch.nn.Module] = {}
    for run_dir in run_dirs:
        record = _record(run_dir)
        key = json.dumps(record["config"]["model"], sort_keys=True)
        base = bases.setdefault(key, _base(record))
        info = describe(run_dir, record)
        kind = record["config"]["task"].get("kind", "classification")
        updates = (full_updates(run_dir, base, kind) if info["method"] == "full" else lora_updates(run_dir, base))
        runs.append((info, updates))
        for layer, (w0, dw, _) in updates.items():
            s = lowrank.singular_values(dw)
            spectra.append({**info, "layer": layer, **lowrank.spectrum_row(dw, fraction, s)})
            values += [{**info, "layer": layer, "index": i + 1, "singular_value": float(v)} for i, v in enumerate(s)]
            if pattern.fullmatch(layer) and bool(dw.any()):  # an unchanged layer has no directions
                for r in ((info["r"],) if info["r"] else full_ranks):
                    if r >= min(dw.shape):
                        continue  # all of W's directions: ||U^T W V^T||_F = ||W||_F, nothing to compare
                    amp.append({**info, "layer": layer, **lowrank.amplification(w0, dw, r)})
    paths = {"spectra": out / "spectra.csv", "singular_values": out / "singular_values.csv",
             "amplification": out / "amplification.csv", "similarity": out / "similarity.csv"}
    pd.DataFrame(spectra).to_csv(paths["spectra"], index=False)
    pd.DataFrame(values).to_csv(paths["singular_values"], index=False)
    pd.DataFrame(amp).to_csv(paths["amplification"], index=False)
    sims = similarity_rows([(i, u) for i, u in runs if i["method"] != "full"], pattern)
    pd.DataFrame(sims).to_csv(paths["similarity"], index=False)
    paths.update(plot_similarity(sims, out))
    paths["spectra_png"] = plot_spectra(pd.DataFrame(values), pattern, out)
    paths["summary"] = out / "summary.md"
    paths["summary"].write_text(summary(pd.DataFrame(spectra), pd.DataFrame(sims), pd.DataFrame(amp), pattern, fraction))
    return paths


def _markdown(frame: pd.DataFrame) -> str:
    return markdown_table(list(frame.columns), frame.itertuples(index=False),
                          number=lambda v: f"{v:.3g}" if isinstance(v, float) else str(v))


def summary(spectra: pd.DataFrame, sims: pd.DataFrame, amp: pd.DataFrame, pattern, fraction: float) -> str:
    """The study's three tables: effective ranks, top-block subspace similarity, Table 7's projections."""
    rank = f"energy_rank_{round(fraction * 100)}"
    parts = [f"# Low-rank analysis\n\nLayers selected for similarity and amplification: `{pattern.pattern}`."]
    if not spectra.empty:
        spectra = spectra.assign(selected=spectra["layer"].map(lambda n: bool(pattern.fullmatch(n))))
        rows = []
        for (label, selected), part in spectra.groupby(["label", "selected"], sort=True):
            rows.append({"run": label, "layers": "selected" if selected else "other", "n layers": len(part),
                         "max rank": int(part["max_rank"].max()),
                         f"{rank} mean": float(part[rank].mean()), f"{rank} range": f"{part[rank].min()}-{part[rank].max()}",
                         "entropy rank mean": float(part["entropy_rank"].mean()),
                         "||dW||_F mean": float(part["frobenius"].mean())})
        parts.append(f"## Effective rank of dW (energy: {fraction:.0%} of ||dW||_F^2; entropy: Roy & Vetterli)\n\n"
                     + _markdown(pd.DataFrame(rows)))
    if not sims.empty:
        rows = []
        for (r1, r2, layer), part in sims.groupby(["run_1", "run_2", "layer"], sort=True):
            k = int(part["i"].max())  # the smaller run's rank: the top k x k block
            block = part[part["j"] <= k]
            rows.append({"run 1": r1, "run 2": r2, "layer": layer.split(".", 1)[-1],
                         "phi(1,1)": float(part[(part.i == 1) & (part.j == 1)]["phi"].iloc[0]),
                         f"mean phi, i,j <= {k}": float(block["phi"].mean()),
                         "random baseline": float(block["random"].mean())})
        parts.append("## Subspace similarity phi(A1, A2, i, j) of the top right-singular vectors\n\n"
                     + _markdown(pd.DataFrame(rows)))
    if not amp.empty:
        cols = ["label", "layer", "r", "dw_norm", "w_norm", "proj_dw", "proj_w", "proj_random", "amplification"]
        table = amp[cols].assign(layer=amp["layer"].map(lambda n: n.split(".", 1)[-1]))
        parts.append("## ||U^T W V^T||_F along dW's top-r directions, W's own and random ones (LoRA paper Table 7)\n\n"
                     + _markdown(table))
    return "\n\n".join(parts) + "\n"


def similarity_rows(lora_runs, pattern) -> list[dict]:
    """phi for every pair of LoRA runs, every selected layer both adapted, every (i, j)."""
    rows = []
    for (i1, u1), (i2, u2) in itertools.combinations(lora_runs, 2):
        if (i1["r"] or 0) > (i2["r"] or 0):
            (i1, u1), (i2, u2) = (i2, u2), (i1, u1)  # the smaller rank first, as in the paper's figures
        for layer in sorted(set(u1) & set(u2)):
            if not pattern.fullmatch(layer):
                continue
            a1, a2 = u1[layer][2], u2[layer][2]
            grid = lowrank.similarity_grid(a1, a2)
            d = a1.shape[1]
            rows += [{"run_1": i1["label"], "run_2": i2["label"], "layer": layer, "i": i + 1, "j": j + 1,
                      "phi": float(grid[i, j]), "random": lowrank.random_similarity(i + 1, j + 1, d)}
                     for i in range(grid.shape[0]) for j in range(grid.shape[1])]
    return rows


def plot_similarity(rows: list[dict], out: Path) -> dict[str, Path]:
    """One figure per pair of runs, one heatmap panel per selected layer (the paper's Figures 3-4)."""
    paths = {}
    if not rows:
        return paths
    frame = pd.DataFrame(rows)
    for (r1, r2), pair in frame.groupby(["run_1", "run_2"], sort=True):
        layers = sorted(pair["layer"].unique())
        fig = Figure(figsize=(3.6 * len(layers), 3.2))
        axes = fig.subplots(1, len(layers), squeeze=False)
        for ax, layer in zip(axes[0], layers):
            grid = pair[pair["layer"] == layer].pivot(index="i", columns="j", values="phi")
            im = ax.imshow(grid.values, vmin=0, vmax=1, cmap="viridis", aspect="auto",
                           extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5))
            ax.set_xlabel(f"j ({r2})")
            ax.set_ylabel(f"i ({r1})")
            ax.set_title(layer.split(".", 1)[-1], fontsize=8)
        fig.colorbar(im, ax=axes[0].tolist())
        name = f"similarity_{_slug(r1)}_vs_{_slug(r2)}"  # e.g. similarity_lora-r8-seed-0_vs_lora-r64-seed-0
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")  # keep the axis labels inside the image
        paths[name] = path
    return paths


def _slug(label: str) -> str:
    """A run label ("LoRA r=8 seed 0") as a file-name part ("lora-r8-seed-0")."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower().replace("=", "")).strip("-")


def plot_spectra(values: pd.DataFrame, pattern, out: Path) -> Path:
    chosen = values[values["layer"].map(lambda name: bool(pattern.fullmatch(name)))]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for (label, layer), part in chosen.groupby(["label", "layer"], sort=True):
        s = part.sort_values("index")["singular_value"]
        ax.semilogy(part.sort_values("index")["index"], s / s.iloc[0], label=f"{label}: {layer.rsplit('.', 1)[-1]}")
    ax.set_xlabel("index")
    ax.set_ylabel("singular value / largest")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "spectra.png"
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="harness-analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (trained with trainer.save_model=true)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables and figures")
    parser.add_argument("--layers", default=DEFAULT_LAYERS,
                        help="regex (full match) of the layers for similarity and amplification (default: %(default)s)")
    parser.add_argument("--fraction", type=float, default=0.9, help="energy fraction of the energy rank (default 0.9)")
    parser.add_argument("--full-ranks", default="4,64", help="r of dW's top directions for full-FT amplification rows")
    args = parser.parse_args(argv)
    try:
        re.compile(args.layers)
        ranks = tuple(int(x) for x in args.full_ranks.split(","))
        paths = analyze(args.runs, args.out, args.layers, args.fraction, ranks)
    except re.error as e:
        print(f"--layers={args.layers!r} is invalid: not a regular expression ({e})", file=sys.stderr)
        return 2
    except ValueError as e:  # RunError included
        print(f"harness-analyze: {e}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
