"""The fake Batch APIs for the Apps Script tests: batches end only when told.

Prints its OpenAI base URL as one JSON line, then reads commands on stdin, one a line:
``finish`` lets every batch sent so far end at its next poll; any other line just asks. Each
is answered with the batches sent so far and their prompts. Answers read ``ANS <prompt>``.
Exits when stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.fakes.batch_api import FakeBatchConfig, FakeBatchServer  # noqa: E402


def main() -> None:
    config = FakeBatchConfig(answer=lambda prompt: f"ANS {prompt}")
    with FakeBatchServer(config) as server:
        print(json.dumps({"base_url": server.base_url}), flush=True)
        for line in sys.stdin:
            if line.strip() == "finish":
                server.finish()
            print(json.dumps({"batches": len(server.batches), "prompts": server.prompts()}),
                  flush=True)


if __name__ == "__main__":
    main()
