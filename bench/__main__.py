"""``python -m bench [--only S1,S3]``: run the scenarios, print the table, write RESULTS.md."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .scenarios import SCENARIOS, Bench, Result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="comma-separated scenarios (default: all of "
                        + ", ".join(SCENARIOS) + ")")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--no-write", action="store_true",
                        help="do not update bench/results.json and bench/RESULTS.md")
    args = parser.parse_args(argv)
    names = [n.strip().upper() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="promptbatch-bench-"))
    results: list[Result] = []
    started = time.monotonic()
    for name in names:
        print(f"== {name} ...", flush=True)
        begun = time.monotonic()
        for result in SCENARIOS[name](Bench(work)):
            results.append(result)
            print("\n".join(report.table([result.to_dict()]).splitlines()[2:]), flush=True)
        print(f"   {name} took {time.monotonic() - begun:.0f} s", flush=True)
    fresh = [r.to_dict() for r in results]
    print(f"\nAll done in {time.monotonic() - started:.0f} s; work folder {work}\n")
    print(report.table(fresh))
    if not args.no_write:
        merged = report.merge(fresh)
        given = sys.argv[1:] if argv is None else argv
        command = shlex.join([".venv/bin/python", "-m", "bench", *given])
        report.write_markdown(merged, command)
        print(f"\nWritten to {report.RESULTS_MD}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
