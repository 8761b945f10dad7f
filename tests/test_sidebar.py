"""The Google Sheets sidebar in a real browser: headless Chromium (as tests/test_app_browser.py)
renders addin/gsheets/Sidebar.html with a stand-in for google.script.run that follows Google's
documented behaviour and forwards each call to the Node harness's Code.gs, in front of a real
``promptbatch serve``. A 500-row sheet with two chained prompt columns runs to the end from the
sidebar; closed midway, the run goes on through its trigger, and the sidebar opened again shows
it. The screenshot in the README (docs/sidebar.png) is the one this test takes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_app_browser import CHROMIUM, DRIVER, chromium_options, stats, wait

ROOT = Path(__file__).resolve().parent.parent
ADDIN = ROOT / "addin" / "gsheets"
SCREENSHOT = ROOT / "docs" / "sidebar.png"
ROWS = 500


def test_sidebar_html_is_built_from_the_panel() -> None:
    """The README's command writes the file that is in the repository, byte for byte."""
    committed = (ADDIN / "Sidebar.html").read_text(encoding="utf-8")
    build = subprocess.run([sys.executable, "addin/gsheets/build_sidebar.py"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert build.returncode == 0, build.stderr
    assert (ADDIN / "Sidebar.html").read_text(encoding="utf-8") == committed, \
        "Sidebar.html was out of date: commit the one python3 addin/gsheets/build_sidebar.py wrote"
    for name in ("api.js", "panel.js", "host-gas.js", "panel.css"):
        part = (ROOT / "promptbatch_sheets" / "web" / name).read_text(encoding="utf-8")
        assert part.strip() in committed, name


if CHROMIUM is None or DRIVER is None:  # tests.test_app_browser skips its module then
    pytest.skip("no chromium and chromedriver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture
def sidebar() -> Iterator[str]:
    """addin/gsheets/testing/sidebar_server.js: the sidebar's address."""
    node = shutil.which("node")
    assert node, "Node.js 20+ is needed to test addin/gsheets"
    env = {**os.environ, "PROMPTBATCH_VENV_BIN": str(Path(sys.executable).parent),
           "SIDEBAR_ROWS": str(ROWS)}
    proc = subprocess.Popen([node, str(ADDIN / "testing" / "sidebar_server.js")], cwd=ROOT,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("sidebar on http://127.0.0.1:"), line
        yield line.split()[2]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    # a sidebar is 300 px wide
    driver = webdriver.Chrome(options=chromium_options(tmp_path / "chromium", "320,1300"),
                              service=Service(executable_path=str(DRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "state", timeout=30) as reply:
        result: dict[str, Any] = json.load(reply)
        return result


WATCH = """
window.__seen = [];
new MutationObserver(function () {
  window.__seen.push(document.getElementById("stats").getAttribute("data-done"));
}).observe(document.getElementById("stats"), { attributes: true });
"""


def test_sidebar_runs_a_chained_sheet_across_trigger_continuations(
        sidebar: str, browser: webdriver.Chrome) -> None:
    driver = browser
    driver.get(sidebar)
    wait(lambda: "openai-compatible:fake" in driver.find_element(By.ID, "settings-state").text,
         message="the settings with the backend's model")
    assert driver.find_element(By.ID, "backend-url").get_attribute("value").startswith("http://")
    assert driver.find_element(By.ID, "token").get_attribute("value") == ""  # never sent back
    assert driver.find_element(By.ID, "source-name").text == "Sheet: Feedback"
    lines = wait(lambda: driver.find_element(By.ID, "preview-lines").text, message="the preview")
    assert '"summary": template ' in lines and '"reply": template ' in lines
    assert "uses the answers of \"summary\"" in lines
    assert f"Rows: {ROWS} in the table" in lines
    estimate = driver.find_element(By.ID, "estimate").text
    assert f"{2 * ROWS:,} requests to send" in estimate and "cost" in estimate

    driver.execute_script(WATCH)
    driver.find_element(By.ID, "run").click()
    seen: set[int] = set()

    def progressed(least: int) -> bool:
        now = stats(driver)
        return now["state"] == "running" and int(now["done"] or 0) >= least

    wait(lambda: progressed(300), seconds=180, message="part of the run")
    seen.update(int(n) for n in driver.execute_script("return window.__seen") if n)
    assert stats(driver)["total"] == str(2 * ROWS)
    text = driver.find_element(By.ID, "stats").text
    assert "from cache" in text and "failed" in text and "so far" in text and "left" in text

    # the sidebar closes: the run's trigger continues it. The count is read while the sidebar
    # is open: the harness is one thread, so a pass that starts as the page closes would
    # already be counted by a later read, and if it finished the run no pass would follow.
    before = state(sidebar)["stats"]["triggerPasses"]
    driver.get("about:blank")
    wait(lambda: state(sidebar)["stats"]["triggerPasses"] > before, seconds=120,
         message="a trigger pass")
    driver.get(sidebar)
    driver.execute_script(WATCH)
    wait(lambda: stats(driver)["state"] == "done", seconds=300, message="the run to end")
    seen.update(int(n) for n in driver.execute_script("return window.__seen") if n)
    assert stats(driver)["done"] == str(2 * ROWS)
    seen.add(2 * ROWS)
    assert len(seen) >= 3, f"progress updated only at {sorted(seen)}"
    final = driver.find_element(By.ID, "stats").text
    assert final.startswith(f"{2 * ROWS:,} of {2 * ROWS:,} done") and final.endswith("Done.")

    after = state(sidebar)
    grid = after["grid"]
    for i in range(ROWS):
        row = grid[2 + i]
        assert row[2] == f"Answer: Summarize fb {i}", i
        assert row[3] == f"Answer: Reply to c{i}: Answer: Summarize fb {i}"[:len(row[3])], i
        assert row[3].startswith(f"Answer: Reply to c{i}: "), i
    calls = after["stats"]["calls"]
    assert calls["pbPanelRun"] == 1 and calls["pbPanelWork"] >= 2
    assert after["stats"]["triggerPasses"] >= 1 and after["triggers"] == 0

    # a second run keeps every answer: nothing is sent to the model
    driver.find_element(By.ID, "preview").click()
    wait(lambda: f"{2 * ROWS} already answered" in driver.find_element(By.ID, "preview-lines").text,
         message="the preview of a finished sheet")
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SCREENSHOT))

    # Freeze answers has nothing to freeze here (answers are values already), and says so
    driver.find_element(By.ID, "freeze").click()
    wait(lambda: "No =PROMPTBATCH formula" in driver.find_element(By.ID, "message").text,
         message="the freeze message")
