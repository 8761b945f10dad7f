"""What the CLI prints, with rich: after a run, for a preview, and for Batch API jobs (what was
sent, what came back, what still runs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .budget import ASSUMED_MAX_ANSWER_TOKENS
from .engine import Summary
from .errors import Interrupted
from .estimate import Estimate
from .plan import Plan
from .runner import Prepared, Preview, summary_cost
from .settings import Via
from .store import Store
from .table import cell_name
from .template import variable_name

if TYPE_CHECKING:  # the Batch API modules load only for the commands that use them
    from .batchapi import Collected
    from .store.journal import Job


def _money(value: float | None) -> str:
    return "unknown (model not in the price table)" if value is None else f"${value:,.4f}"


def _tokens(summary: Summary) -> str:
    """Usage, beside what the estimate said before sending, so a user learns to trust it."""
    used = f"{summary.prompt_tokens:,} in, {summary.completion_tokens:,} out"
    est = summary.estimate
    if est is None or not summary.requests:
        return used
    return f"{used} (estimated {est.prompt_tokens:,} in, {est.completion_tokens:,} out)"


def _estimate_lines(est: Estimate, max_tokens: int | None) -> list[str]:
    """Typical tokens and cost, then the ceiling, the Batch API price and the basis."""
    cap = (f"--max-tokens {max_tokens}" if max_tokens else
           f"{ASSUMED_MAX_ANSWER_TOKENS:,} each; set --max-tokens to bound it")
    cost = _money(est.cost_usd)
    if est.cost_max_usd is not None and est.cost_max_usd > (est.cost_usd or 0.0):
        cost += f" (at most {_money(est.cost_max_usd)})"
    lines = [f"~{est.prompt_tokens:,} prompt tokens + ~{est.completion_tokens:,} answer tokens "
             f"(up to {est.completion_tokens_max:,} at {cap}), cost {cost}, "
             f"about {est.seconds:,.1f} s. No model was called."]
    if est.batch_cost_usd is not None:
        lines.append(f"Through the provider's Batch API (half price, answers within a day) "
                     f"it would cost {_money(est.batch_cost_usd)}: add --via batch to send it "
                     "that way.")
    lines.append(f"Token counts estimated from {est.basis}.")
    lines.append(f"Time from {est.time_basis}.")
    return lines


def _server(prepared: Prepared) -> str:
    """Where the run's requests go, and which cell chose it when the workbook did."""
    cell = prepared.sheet_choices.get("base_url") if prepared.spec.base_url else None
    return escape(prepared.spec.server + (f" (set by {cell})" if cell else ""))


def nothing_to_send(plan: Plan) -> str:
    """Why a run sends nothing (a table with no rows at all is refused before this)."""
    return (f"All {plan.kept} rows already have answers; nothing to send. Use --rerun all to "
            "ask again.")


def print_summary(console: Console, prepared: Prepared, summary: Summary,
                  output: Path | str | None, store: Store | None = None) -> None:
    table = Table(title="promptbatch run", show_header=False, title_justify="left")
    table.add_row("model", prepared.price_label)
    table.add_row("server", _server(prepared))
    table.add_row("rows answered", f"{summary.answered:,} (new)")
    table.add_row("from cache", f"{summary.cached:,}")
    table.add_row("failed", f"{summary.failed:,}")
    table.add_row("already answered", f"{summary.kept:,} (kept)")
    table.add_row("requests", f"{summary.requests:,} ({summary.retries:,} retries)")
    table.add_row("tokens", _tokens(summary))
    table.add_row("cost", _money(summary_cost(prepared, summary)))
    table.add_row("wall time", f"{summary.seconds:.1f} s")
    if output is not None:
        table.add_row("written to", str(output))
    if prepared.settings.export_dir:
        table.add_row("answers as files", escape(f"{prepared.settings.export_dir} (.md)"))
    console.print(table)
    for error in summary.errors:  # a server's words: markup in them is text
        console.print(f"[red]#ERROR:[/] {escape(error)}")
    if summary.rate_limited:
        console.print(f"The provider refused {summary.rate_limited:,} rows for its rate limit "
                      f"(HTTP 429; a row is retried for at most {prepared.settings.timeout:g} s, "
                      "the timeout setting): it allows less than this run asks. Run the same "
                      "command again later to retry them; if it keeps happening, lower "
                      "--concurrency or set --rpm to your account's limit.")
    _print_cut(console, summary, prepared.settings.max_tokens)
    if summary.unsent:
        console.print(f"Budget ${prepared.settings.budget:,.4f} reached: {summary.unsent:,} rows "
                      "were not sent and stay empty; run again with a larger --budget to "
                      "finish them.")
    if summary.failed:
        console.print("Failed rows hold '#ERROR: ...'; run the same command again to retry "
                      "them (answers already received are kept).")
    _unsaved(console, store)


def print_interrupted(console: Console, stop: Interrupted, output: Path | str | None,
                      store: Store) -> None:
    """Ctrl-C: what is kept and that a rerun goes on from there."""
    where = f"{output} and the cache" if output is not None else "the sheet and the cache"
    console.print(f"Stopped (Ctrl-C). {stop.answers:,} answers are kept in {where}; "
                  f"{stop.missing:,} prompts have none yet. Run the same command again to "
                  "continue: it sends only those.", soft_wrap=True)
    _unsaved(console, store)


def _unsaved(console: Console, store: Store | None) -> None:
    """What became of the cache during the run, and the answers only the output holds."""
    if store is None:
        return
    for line in [*store.take_notices(), store.unsaved_notice()]:
        if line:
            console.print(line, soft_wrap=True)


def _print_cut(console: Console, summary: Summary, max_tokens: int | None) -> None:
    """Answers that stopped at the length cap are in their cells, but not whole."""
    if not summary.cut:
        return
    answers = "1 answer was" if summary.cut == 1 else f"{summary.cut:,} answers were"
    if max_tokens is None:
        console.print(f"{answers} cut at the model's longest answer: set --max-tokens higher "
                      "to get whole answers.")
    else:
        console.print(f"{answers} cut at --max-tokens {max_tokens:,}: raise it to get whole "
                      "answers.")


def print_preview(console: Console, preview: Preview) -> None:
    plan = preview.prepared.plan
    table = plan.table
    used = {v for step in plan.steps for v in step.template.variables}
    columns = list(table.columns.values())
    est = preview.estimate
    chained = len({s.name for s in plan.steps}) > 1
    origin = "" if chained else f"[bold]template[/] {table.template.origin}   "
    console.print(f"[bold]Sheet[/] {table.sheet}   {origin}"
                  f"[bold]model[/] {preview.prepared.price_label}")
    console.print(f"[bold]Server[/] {_server(preview.prepared)}")
    variations = preview.prepared.settings.variations
    if variations > 1:
        console.print(f"[bold]{variations} variations[/] of each answer, each its own request "
                      "(the variation's number is its seed)")
    for step in plan.steps:
        if chained and (step.variation or 1) == 1:
            uses = ", ".join(repr(plan.steps[n].name) for n in step.needs)
            console.print(f"[bold]{step.name}[/]: template {step.template.origin}"
                          + (f", uses the answers of {uses}" if uses else ""))
        for out in step.outputs:
            console.print(f"Answers go to column {out.header!r} at "
                          f"{cell_name(table.sheet, table.header_row, out.col)}"
                          + ("" if out.exists else " (new column)"))
    later = (f" now, {preview.waiting:,} once the answers they use are back"
             if preview.waiting else "")
    console.print(f"Rows: {preview.rows:,} in the table, {plan.kept:,} already answered, "
                  f"{preview.cached:,} answered from cache, [bold]{preview.to_send:,} to send[/] "
                  f"({preview.unique_prompts:,} distinct prompts{later}).")
    for row, index, reason in plan.refused[:5]:
        name = f" ({plan.steps[index].name})" if chained else ""
        console.print(f"Row {row + 1}{name} will not be sent: {reason}.")
    variables = Table("column", "variable", "used by template")
    for header in columns:
        name = variable_name(header)
        variables.add_row(header, f"{{{{ {name} }}}}", "yes" if name in used else "-")
    for step in plan.steps:
        for out in step.outputs if chained and (step.variation or 1) == 1 else ():
            name = variable_name(out.name)
            variables.add_row(out.name, f"{{{{ {name} }}}}",
                              f"answers of {step.name!r}" if name in used else "-")
    console.print(variables)
    system = preview.prepared.params.system
    for job in preview.first_prompts:
        if job.system is not None or system is not None:
            console.rule(f"system prompt for row {job.row + 1}, from "
                         f"{escape(preview.system_origin or '')}")
            console.print(job.system or system, markup=False)
        console.rule(f"prompt for row {job.row + 1}")
        console.print(job.prompt, markup=False)
    console.rule("estimate")
    for line in _estimate_lines(est, preview.prepared.settings.max_tokens):
        console.print(line)


# --------------------------------------------------------------------------- Batch API


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"



def progress(job: Job) -> str:
    """Done and failed requests, whichever provider's request_counts names them."""
    counts = job.counts
    done = counts.get("completed", 0) + counts.get("succeeded", 0)
    failed = sum(counts.get(k, 0) for k in ("failed", "errored", "expired", "canceled"))
    text = f"{done:,}/{job.requests:,} done"
    return text + (f", {failed:,} failed" if failed else "")


def print_jobs(console: Console, jobs: list[Job], send: str | None = None) -> None:
    """Two lines a job: provider ids are long, and a table of them wraps in a terminal.
    ``send`` is the command that would send the sheet's prompts, when a sheet was named."""
    if not jobs:
        console.print("No batch jobs in the journal. Send one with: " + (
            send or "promptbatch run BOOK --via batch --model openai:MODEL (or anthropic:MODEL)"
        ) + ".", markup=False, soft_wrap=True)
        return
    now = time.time()
    for job in jobs:
        state = job.status + ("" if job.open else ", collected")
        console.print(f"[bold]{job.id}[/]  {job.model_name} at {escape(job.base_url)}  "
                      f"est. {_money(job.estimate_usd)}  sent {age(now - job.created)} ago")
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
                  f"job{'s' * (len(jobs) > 1)}: " + ", ".join(j.id for j in jobs)
                  + f" (to {escape(jobs[0].base_url)})")
    console.print(f"Estimated cost at batch price (half the realtime price): "
                  f"{_money(total if known else None)}. Answers come within 24 hours.")


def print_collected(console: Console, prepared: Prepared, collected: Collected,
                    output: Path | str | None, again: Callable[..., str]) -> None:
    """``again(command, **changes)`` is the user's own command line turned into ``command``,
    so a hint can be typed as it is printed."""
    summary = collected.summary
    if summary.cached or summary.failed or summary.kept:  # else only jobs were sent
        table = Table(title="batch answers", show_header=False, title_justify="left")
        table.add_row("model", prepared.price_label)
        table.add_row("server", _server(prepared))
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
    _print_cut(console, summary, prepared.settings.max_tokens)
    running = [j.id for j in collected.jobs if j.open]
    if collected.waiting:
        console.print(f"{collected.waiting:,} rows wait for {', '.join(running)}: their cells "
                      f"stay empty for now. Collect them later with: {again('collect')}",
                      markup=False, soft_wrap=True)
    if collected.unsent:
        console.print(f"{collected.unsent:,} rows were never sent; send them with: "
                      f"{again('run', via=Via.BATCH)}", markup=False, soft_wrap=True)
    if summary.failed:
        console.print(f"Failed rows hold '#ERROR: ...'; send only them again with: "
                      f"{again('run', via=Via.BATCH)} (or without --via batch, in realtime).",
                      markup=False, soft_wrap=True)
    if not (collected.waiting or collected.unsent or summary.failed):
        console.print("Every row has its answer.")
