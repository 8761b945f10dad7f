"""What the CLI prints after a run and for a preview, with rich."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .batch import Prepared, Preview, summary_cost
from .budget import ASSUMED_MAX_ANSWER_TOKENS
from .engine import Summary
from .estimate import Estimate
from .table import cell_name
from .template import variable_name


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


def print_summary(console: Console, prepared: Prepared, summary: Summary,
                  output: Path | None) -> None:
    table = Table(title="promptbatch run", show_header=False, title_justify="left")
    table.add_row("model", prepared.spec.label)
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
    console.print(table)
    for error in summary.errors:
        console.print(f"[red]#ERROR:[/] {error}")
    if summary.unsent:
        console.print(f"Budget ${prepared.settings.budget:,.4f} reached: {summary.unsent:,} rows "
                      "were not sent and stay empty; run again with a larger --budget to "
                      "finish them.")
    if summary.failed:
        console.print("Failed rows hold '#ERROR: ...'; run the same command again to retry "
                      "them (answers already received are kept).")


def print_preview(console: Console, preview: Preview) -> None:
    plan = preview.prepared.plan
    table = plan.table
    used = {v for step in plan.steps for v in step.template.variables}
    columns = list(table.columns.values())
    est = preview.estimate
    chained = len(plan.steps) > 1
    origin = "" if chained else f"[bold]template[/] {table.template.origin}   "
    console.print(f"[bold]Sheet[/] {table.sheet}   {origin}"
                  f"[bold]model[/] {preview.prepared.spec.label}")
    for step in plan.steps:
        if chained:
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
        for out in step.outputs if chained else ():
            name = variable_name(out.header)
            variables.add_row(out.header, f"{{{{ {name} }}}}",
                              f"answers of {step.name!r}" if name in used else "-")
    console.print(variables)
    for row, prompt in preview.first_prompts:
        console.rule(f"prompt for row {row + 1}")
        console.print(prompt, markup=False)
    console.rule("estimate")
    for line in _estimate_lines(est, preview.prepared.settings.max_tokens):
        console.print(line)
