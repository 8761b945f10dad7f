"""The Apps Script bridge (addin/gsheets/*.gs) under Node's test runner, against a real
`promptbatch serve`, and type-checked against Google's own types. Node is required: a missing
node fails these tests rather than skip them."""

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


def test_apps_script_checks_against_googles_types() -> None:
    """tsc --allowJs --checkJs over the .gs files (@types/google-apps-script) and the sidebar's
    scripts: a wrong method name or argument the harness would accept fails here."""
    node = shutil.which("node")
    assert node, "Node.js 20+ is needed to check addin/gsheets against Google's types."
    tsc = ROOT / "addin" / "gsheets" / "node_modules" / "typescript" / "bin" / "tsc"
    assert tsc.exists(), "TypeScript is not installed: make test runs npm ci in addin/gsheets."
    result = subprocess.run([node, "addin/gsheets/testing/typecheck.js"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert "check against Google's types" in result.stdout
