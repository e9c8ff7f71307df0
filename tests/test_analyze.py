"""harness-analyze on run folders built from a tiny BERT: LoRA adapters with known B A, and a
full-FT model with a known rank-2 change in one layer."""

import json

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from harness import analyze, lowrank
from harness.lora import LoraConfig, apply_lora, lora_layers, save_adapter
from harness.models import load_model
from harness.tiny import save_tiny

LAYER = "bert.encoder.layer.1.attention.self.query"
PATTERN = r".*\.1\.attention\.self\.(query|value)"


def model_cfg(path):
    return {"name": "tiny_bert", "name_or_path": str(path), "gguf_file": None, "dtype": "float32",
            "trust_remote_code": False, "config_overrides": None, "dropout": None, "head_modules": ["classifier"]}


def write_record(run_dir, base_dir, method, seed):
    config = {"model": model_cfg(base_dir), "task": {"kind": "classification"}, "method": method}
    (run_dir / "results.json").write_text(json.dumps({"status": "completed", "seed": seed, "config": config}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    base_dir = save_tiny("bert", root / "base")
    cfg = OmegaConf.create(model_cfg(base_dir))
    made = {}
    for r, seed in ((4, 0), (8, 1)):
        run = root / f"lora_r{r}"
        run.mkdir()
        model = load_model(cfg, "classification", num_labels=2)
        apply_lora(model, LoraConfig(r=r, alpha=2 * r, target_modules=("query", "value")))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_B.weight.normal_(generator=g)
        expected = {name: layer.scaling * layer.lora_B.weight.double() @ layer.lora_A.weight.double() for name, layer in
                    lora_layers(model).items()}
        save_adapter(model, run / "adapter", base_model_name_or_path=str(base_dir))
        write_record(run, base_dir, {"name": "lora", "r": r}, seed)
        made[f"lora{r}"] = (run, expected)
    run = root / "full"
    run.mkdir()
    model = load_model(cfg, "classification", num_labels=2)
    g = torch.Generator().manual_seed(2)
    change = torch.randn(32, 2, generator=g) @ torch.randn(2, 32, generator=g)  # rank 2
    with torch.no_grad():
        model.get_submodule(LAYER).weight += change
    model.save_pretrained(run / "model")
    write_record(run, base_dir, {"name": "full", "lr": 1e-4}, 0)
    made["full"] = (run, change.double())
    return made


def test_analyze_recovers_the_updates_and_writes_every_table(runs, tmp_path):
    dirs = [runs["lora4"][0], runs["lora8"][0], runs["full"][0]]
    paths = analyze.analyze(dirs, tmp_path, layers=PATTERN, full_ranks=(2, 64))
    spectra = pd.read_csv(paths["spectra"])
    # LoRA: dW = scaling * B @ A, exactly what the model's layer computes
    for key in ("lora4", "lora8"):
        run, expected = runs[key]
        rows = spectra[spectra.run == run.name].set_index("layer")
        assert set(rows.index) == set(expected)
        for layer, dw in expected.items():
            assert rows.loc[layer, "frobenius"] == pytest.approx(float(torch.linalg.matrix_norm(dw)), rel=1e-6)
            assert rows.loc[layer, "energy_rank_90"] <= int(key[4:])
    # full FT: only the changed layer moved, by a rank-2 matrix
    full = spectra[spectra.run == "full"].set_index("layer")
    assert full.loc[LAYER, "frobenius"] == pytest.approx(float(torch.linalg.matrix_norm(runs["full"][1])), rel=1e-5)
    assert full.loc[LAYER, "entropy_rank"] <= 2 + 1e-3
    assert (full.drop(index=LAYER)["frobenius"] == 0).all()
    assert "bert.encoder.layer.0.output.dense" in full.index and not any("classifier" in n for n in full.index)
    # similarity: one pair of LoRA runs, the r=4 run first, 4 x 8 grid per selected layer (q and v of layer 1)
    sim = pd.read_csv(paths["similarity"])
    assert set(zip(sim.run_1, sim.run_2)) == {("LoRA r=4 seed 0", "LoRA r=8 seed 1")}
    assert len(sim) == 2 * 4 * 8 and sim.phi.between(0, 1 + 1e-9).all()
    assert (sim.random == sim[["i", "j"]].max(axis=1) / 32).all()
    # amplification: LoRA at its own r, full FT at each --full-ranks value, on the selected layers only
    amp = pd.read_csv(paths["amplification"])
    # r=64 >= the 32-wide layer: left out (it would project on all of W); the unchanged value layer too
    assert set(amp[amp.method == "full"].r) == {2} and set(amp[amp.method == "lora"].r) == {4, 8}
    assert set(amp[amp.method == "full"].layer) == {LAYER}
    # at the change's own rank the float32 round trip's noise (~1e-7 |W|) does not move dW's top directions
    row = amp[(amp.run == "full") & (amp.layer == LAYER) & (amp.r == 2)].iloc[0]
    w0 = load_model(OmegaConf.create(model_cfg(runs["full"][0].parent / "base")), "classification",
                    num_labels=2).get_submodule(LAYER).weight.double()
    assert row.amplification == pytest.approx(lowrank.amplification(w0, runs["full"][1], 2)["amplification"], rel=1e-4)
    # one figure for the one pair, a panel per layer, named by the pair
    assert [name for name in paths if name.startswith("similarity_")] == ["similarity_lora-r4-seed-0_vs_lora-r8-seed-1"]
    text = paths["summary"].read_text()
    assert "| \\|\\|dW\\|\\|_F mean |" in text  # a bare "|" in a header would split the cell
    assert "| LoRA r=4 seed 0 | LoRA r=8 seed 1 | encoder.layer.1.attention.self.query |" in text
    assert text.count("\n| full FT seed 0 | 1.attention") == 0 and "| full FT seed 0 | encoder.layer.1.attention.self.query | 2 |" in text
    for name in ("similarity_lora-r4-seed-0_vs_lora-r8-seed-1", "spectra_png"):
        assert paths[name].stat().st_size > 1000


def test_cli_bad_run_folder_is_one_line(tmp_path, capsys):
    assert analyze.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no results.json" in err[0]
    assert analyze.main([str(tmp_path), "--out", str(tmp_path / "o"), "--layers", "("]) == 2
    assert "--layers='('" in capsys.readouterr().err
