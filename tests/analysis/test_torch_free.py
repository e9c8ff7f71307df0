"""harness.analysis and the two command lines over it never import torch (nor wandb, until --wandb
asks for it): tables and reports are made where the training stack is not installed, and start in
a fraction of the time. Checked in a fresh interpreter, after real work, so a lazy import inside a
function would be caught too."""

import subprocess
import sys

from tests.analysis.sweeps import FIXTURES
from tests.helpers import ROOT

CODE = f"""
import sys
import harness.analysis, harness.report, harness.table
from harness.analysis import write_report
assert harness.table.main([{str(FIXTURES)!r}, "--format", "latex"]) == 0
write_report([{str(FIXTURES)!r}], sys.argv[1])
heavy = sorted(m for m in ("torch", "wandb", "transformers", "harness.telemetry", "matplotlib.pyplot") if m in sys.modules)
assert not heavy, heavy
"""


def test_analysis_and_its_command_lines_never_import_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CODE, str(tmp_path / "report")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "report" / "index.html").is_file() and "\\toprule" in proc.stdout
