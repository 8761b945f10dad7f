"""The Apps Script bridge (addin/gsheets/Code.gs) under Node's test runner, against a real
`promptbatch serve`. Node is required: a missing node fails this test rather than skip it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_code_gs_under_node() -> None:
    node = shutil.which("node")
    assert node, "Node.js 20+ is needed to test addin/gsheets (the Apps Script bridge)."
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    assert int(re.sub(r"^v(\d+).*", r"\1", version.strip())) >= 20, f"node {version} < 20"
    env = {**os.environ, "PROMPTBATCH_VENV_BIN": str(Path(sys.executable).parent)}
    result = subprocess.run([node, "--test", "addin/gsheets/test/"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
