"""``promptbatch app`` in a real browser: headless Chromium (Debian's chromium and
chromium-driver, which ``make test`` installs) drives the page against the fake LLM server.

Upload a sample, read the variable panel and the system prompt, run to the end, cancel a
second run midway (nothing is sent after the cancel but what was in flight), finish it,
download the workbook and check every answer in it with openpyxl. The screenshot in the
README (docs/app.png) is the one this test takes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from tests.conftest import SAMPLES
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("no chromium and chromedriver on this machine (make test installs Debian's "
                "chromium and chromium-driver as root)", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skip: selenium drives chromium)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "app.png"
CONCURRENCY = 2
SAMPLE = "ai_orchestration_strategy.xlsx"
ROWS = 12


def chat_count(server: FakeLLMServer) -> int:
    return sum(1 for r in server.requests if r["path"].endswith("/chat/completions"))


def wait(what: Callable[[], Any], seconds: float = 60.0, message: str = "") -> Any:
    """Poll until ``what()`` is truthy: behaviour, not timing, on a loaded machine."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = what()
        except Exception:  # an element not there yet, a page not yet loaded
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message or what}")
        time.sleep(0.1)


@pytest.fixture
def slow_llm() -> Iterator[FakeLLMServer]:
    """Each answer takes a moment, so a run can be cancelled in the middle."""
    with FakeLLMServer(FakeLLMConfig(latency_median_s=0.25)) as server:
        yield server


@pytest.fixture
def app(slow_llm: FakeLLMServer, isolated_home: Path) -> Iterator[str]:
    """``promptbatch app`` in its own process, its model the fake; the printed address."""
    command = [str(Path(sys.executable).parent / "promptbatch"), "app", "--no-browser",
               "--model", "openai-compatible:fake", "--base-url", slow_llm.base_url,
               "--concurrency", str(CONCURRENCY)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("PromptBatch app on http://127.0.0.1:"), first
        yield first.split()[3]
    finally:
        proc.terminate()
        proc.wait(10)


def chromium_options(profile: Path, window: str) -> webdriver.ChromeOptions:
    """Headless Debian chromium, nothing fetched from the network, its own profile."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--window-size={window}",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return options


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = chromium_options(tmp_path / "chromium", "1280,2000")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(DRIVER)))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver
    finally:
        driver.quit()


def stats(driver: webdriver.Chrome) -> dict[str, str]:
    node = driver.find_element(By.ID, "stats")
    return {k: node.get_attribute(f"data-{k}") or "" for k in ("state", "done", "total")}


def answers_on_page(driver: webdriver.Chrome) -> dict[tuple[int, str], str]:
    cells = driver.find_elements(By.CSS_SELECTOR, "#answers td[data-col]")
    return {(int(c.find_element(By.XPATH, "..").get_attribute("data-row") or 0),
             c.get_attribute("data-col") or ""): c.get_attribute("textContent") or ""
            for c in cells}


def test_page_runs_the_seed_template_cancels_and_downloads(
        app: str, browser: webdriver.Chrome, slow_llm: FakeLLMServer, tmp_path: Path) -> None:
    driver = browser
    driver.get(app.replace("?token=", "?token=wrong"))
    assert "one-time token" in driver.page_source  # no page without the token
    driver.get(app)
    assert "token" not in driver.current_url  # traded for a cookie, gone from the address
    driver.find_element(By.ID, "file").send_keys(str(SAMPLES / SAMPLE))

    # the variable panel: every header is a variable the template uses
    wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#variables tr[data-header]")) == 5,
         message="the variable panel")
    rows = {r.get_attribute("data-header"): r.text
            for r in driver.find_elements(By.CSS_SELECTOR, "#variables tr[data-header]")}
    assert rows["Business Challenge"] == "Business Challenge {{ business_challenge }} yes"
    assert rows["Available Resources"].endswith("{{ available_resources }} yes")
    prompts = driver.find_element(By.ID, "prompts").text
    assert "System prompt for row 4, from the <system> block of 'Strategy'!B1" in prompts
    assert "You are an expert AI Strategist" in prompts
    assert "12 requests to send" in driver.find_element(By.ID, "estimate").text

    # run to the end
    driver.find_element(By.ID, "run").click()
    wait(lambda: stats(driver)["state"] == "done", message="the first run to end")
    assert stats(driver)["done"] == str(ROWS) and chat_count(slow_llm) == ROWS
    page = answers_on_page(driver)
    assert len(page) == ROWS and all(v.startswith("Answer: <context>") for v in page.values())
    for body in (r["json"] for r in slow_llm.requests):
        assert body["messages"][0]["role"] == "system"

    # three variations: a second run, cancelled midway
    field = driver.find_element(By.ID, "variations")
    field.clear()
    field.send_keys("3")
    wait(lambda: "36 requests to send" in driver.find_element(By.ID, "estimate").text,
         message="the preview of three variations")
    driver.find_element(By.ID, "run").click()
    wait(lambda: stats(driver)["state"] == "running" and int(stats(driver)["done"]) >= 6,
         message="some answers")
    driver.find_element(By.ID, "cancel").click()
    sent_at_cancel = chat_count(slow_llm)
    wait(lambda: stats(driver)["state"] == "cancelled", message="the cancel")
    time.sleep(1.0)  # anything still queued would go out now
    sent = chat_count(slow_llm) - ROWS
    assert sent <= sent_at_cancel - ROWS + CONCURRENCY  # only what was in flight
    assert 6 <= sent < 3 * ROWS
    assert "prompts were not sent" in driver.find_element(By.ID, "stats").text

    # run again: what was paid for comes from the cache, the rest is sent
    driver.find_element(By.ID, "run").click()
    wait(lambda: stats(driver)["state"] == "done", message="the second run to end")
    assert chat_count(slow_llm) == ROWS + 3 * ROWS  # every prompt paid for once
    page = answers_on_page(driver)
    driver.save_screenshot(str(SCREENSHOT))

    driver.find_element(By.ID, "download").click()
    downloads = tmp_path / "downloads"
    book = wait(lambda: next((p for p in downloads.glob("*.xlsx")), None),
                message="the download")
    wait(lambda: not list(downloads.glob("*.crdownload")), message="the download to end")
    sheet = openpyxl.load_workbook(book)["Strategy"]
    header = [c.value for c in sheet[3]]
    assert header[5:] == ["response 1", "response 2", "response 3"]
    for row in range(4, 4 + ROWS):
        challenge = sheet.cell(row, 1).value
        for col, name in enumerate(header[5:], start=6):
            value = sheet.cell(row, col).value
            prompt = f"<context>\nBusiness Challenge: {challenge}"
            assert value == f"Answer: {prompt[:60]}".rstrip()  # the fake's answer to it
            assert " ".join(value.split()) == " ".join(page[row, name].split())
