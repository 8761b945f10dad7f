"""What the CLI prints for Batch API jobs: what was sent, what came back, what still runs."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .batch import Prepared
from .batchjobs import Collected
from .journal import Job


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def progress(job: Job) -> str:
    """Done and failed requests, whichever provider's request_counts names them."""
    counts = job.counts
    done = counts.get("completed", 0) + counts.get("succeeded", 0)
    failed = sum(counts.get(k, 0) for k in ("failed", "errored", "expired", "canceled"))
    text = f"{done:,}/{job.requests:,} done"
    return text + (f", {failed:,} failed" if failed else "")


def print_jobs(console: Console, jobs: list[Job]) -> None:
    """Two lines a job: provider ids are long, and a table of them wraps in a terminal."""
    if not jobs:
        console.print("No batch jobs in the journal. Send one with: promptbatch run BOOK "
                      "--via batch --model openai:MODEL (or anthropic:MODEL).")
        return
    now = time.time()
    for job in jobs:
        state = job.status + ("" if job.open else ", collected")
        console.print(f"[bold]{job.id}[/]  {job.model}  est. {_money(job.estimate_usd)}  "
                      f"sent {age(now - job.created)} ago")
        # the status and the error are the server's words: markup in them is text
        console.print(escape(f"  {state}: {progress(job)}"
                             + (f"; {job.error}" if job.error else "")))


def print_submitted(console: Console, jobs: list[Job]) -> None:
    if not jobs:
        console.print("Nothing new to send: every prompt is answered or in a running job.")
        return
    total = sum(j.estimate_usd or 0.0 for j in jobs)
    known = all(j.estimate_usd is not None for j in jobs)
    console.print(f"Sent {sum(j.requests for j in jobs):,} requests in {len(jobs)} batch "
                  f"job{'s' * (len(jobs) > 1)}: " + ", ".join(j.id for j in jobs))
    console.print(f"Estimated cost at batch price (half the realtime price): "
                  f"{_money(total if known else None)}. Answers come within 24 hours.")


def print_collected(console: Console, prepared: Prepared, collected: Collected,
                    output: Path | None, book: str) -> None:
    summary = collected.summary
    if summary.cached or summary.failed or summary.kept:  # else only jobs were sent
        table = Table(title="batch answers", show_header=False, title_justify="left")
        table.add_row("model", prepared.spec.label)
        table.add_row("rows answered", f"{summary.cached:,}")
        table.add_row("failed", f"{summary.failed:,}")
        table.add_row("waiting", f"{collected.waiting:,} (in running jobs)")
        table.add_row("not sent", f"{collected.unsent:,}")
        table.add_row("already answered", f"{summary.kept:,} (kept)")
        if output is not None:
            table.add_row("written to", str(output))
        console.print(table)
    for error in summary.errors:
        console.print(f"[red]#ERROR:[/] {escape(error)}")
    running = [j.id for j in collected.jobs if j.open]
    if collected.waiting:
        console.print(f"{collected.waiting:,} rows wait for {', '.join(running)}: their cells "
                      f"stay empty for now. Collect them later with: promptbatch collect "
                      f"{book} (with the same options), or run this command again.")
    if collected.unsent:
        console.print(f"{collected.unsent:,} rows were never sent; send them with: "
                      f"promptbatch run {book} --via batch")
    if summary.failed:
        console.print(f"Failed rows hold '#ERROR: ...'; send only them again with: "
                      f"promptbatch run {book} --via batch (or without --via batch, in "
                      "realtime).")
    if not (collected.waiting or collected.unsent or summary.failed):
        console.print("Every row has its answer.")
