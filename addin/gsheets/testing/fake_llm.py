"""The fake LLM for the Apps Script tests: prompts containing FAIL get a 500.

Prints its base URL as one JSON line, then answers each line on stdin with its counters, so a
Node test can tell how many model calls a step made. Exits when stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer  # noqa: E402


def main() -> None:
    config = FakeLLMConfig(fault_for=lambda prompt: "500" if "FAIL" in prompt else None)
    with FakeLLMServer(config) as server:
        print(json.dumps({"base_url": server.base_url}), flush=True)
        for _ in sys.stdin:
            print(json.dumps({"ok": server.count_ok, "requests": len(server.requests)}),
                  flush=True)


if __name__ == "__main__":
    main()
