"""``python -m bench [--only S1,S3] [--runs 3]``: run the scenarios, print the tables, write
RESULTS.md. Peers run in the first run only; ours (no flags, hand-tuned) in every run."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .scenarios import ONCE, ORDER, SCENARIOS, Bench, Result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(ORDER),
                        help="comma-separated scenarios (default: all of " + ", ".join(ORDER)
                        + ")")
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--no-write", action="store_true",
                        help="do not update bench/results.json and bench/RESULTS.md")
    args = parser.parse_args(argv)
    wanted = {n.strip().upper() for n in args.only.split(",") if n.strip()}
    names = [n for n in ORDER if n.upper() in wanted]
    unknown = wanted - {n.upper() for n in ORDER}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="promptbatch-bench-"))
    results: list[Result] = []
    started = time.monotonic()
    for rep in range(1, args.runs + 1):
        for name in names:
            if rep > 1 and name in ONCE:
                continue
            print(f"== {name} run {rep} ...", flush=True)
            begun = time.monotonic()
            for result in SCENARIOS[name](Bench(work), rep, rep == 1):
                results.append(result)
                print(f"   {result.client}: {result.rows_per_s:,.1f} rows/s, ratio "
                      f"{result.ratio or 0:.2f}, 429s {result.count_429}, failed "
                      f"{result.failed}", flush=True)
            print(f"   {name} took {time.monotonic() - begun:.0f} s", flush=True)
    fresh = [r.to_dict() for r in results]
    print(f"\nAll done in {time.monotonic() - started:.0f} s; work folder {work}\n")
    print(report.table(fresh) + "\n\n" + report.targets_table(fresh))
    if not args.no_write:
        merged = report.merge(fresh, ORDER)
        given = sys.argv[1:] if argv is None else argv
        report.write_markdown(merged, shlex.join([".venv/bin/python", "-m", "bench", *given]),
                              None if names == ORDER else names)
        print(f"\nWritten to {report.RESULTS_MD}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(ok for *_, ok in report.targets(fresh)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
