"""A built wheel carries its configs: `pip wheel .`, installed into a fresh venv, runs `harness-train`
from a folder that is not the checkout (conf/ ships inside the package as harness/conf/, setup.py)."""

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli_env

pytestmark = pytest.mark.slow  # builds a wheel, makes a venv and trains MiniLM for 2 steps: about a minute


def run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installed_in_a_fresh_venv_trains_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         ROOT, "-w", wheels], env=dict(os.environ, PIP_NO_INDEX="1"))
    (wheel,) = wheels.glob("lora_harness-*.whl")
    # Nothing of the checkout on the path (the build leaves lora_harness.egg-info in it, which pip
    # would take for an installed copy).
    env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], env=env)
    # The dependencies come from the environment running this test (whose own lora-harness, an
    # editable install, stays out: a plain path line in a .pth does not run that folder's .pth hooks).
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip()
    Path(site, "shared-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([python, "-c", "import harness.paths as p; print(p.__file__); print(p.conf_dir())"],
                cwd=elsewhere, env=env).stdout.split()
    assert all(Path(w).is_relative_to(env_dir) for w in where), where  # the installed copy, configs included
    assert Path(where[1], "config.yaml").is_file()
    run([env_dir / "bin" / "harness-train", "trainer.max_steps=2"], cwd=elsewhere, env=env)
    (path,) = (elsewhere / "outputs" / "runs" / "minilm" / "rotten_tomatoes").glob("*/results.json")
    record = json.loads(path.read_text())
    assert (record["status"], record["steps"], record["config"]["trainer"]["max_steps"]) == ("completed", 2, 2)
