"""A row's later prompts, rendered as soon as the answers they use come back.

``make_plan`` renders what it can before the run; a template that uses another column's
answer (``{{ summary }}``) waits in ``Plan.waiting``. A ``Chain`` is the engine's ``follow``
hook for one run: it keeps those rows' answers until their last step is rendered.
"""

from __future__ import annotations

from .engine import RowResult, error_text
from .errors import TemplateError
from .plan import Answers, Plan, RowJob, needs_failed
from .table import Grid


class Chain:
    """Turns each answer into the prompts of the same row that were waiting for it."""

    def __init__(self, plan: Plan, grid: Grid) -> None:
        self.plan = plan
        self.grid = grid
        self.waiting = {row: list(steps) for row, steps in plan.waiting.items()}
        self.answers: dict[int, Answers] = {row: dict(plan.known.get(row, {}))
                                            for row in plan.waiting}

    def __call__(self, result: RowResult) -> list[RowJob | RowResult]:
        row = result.row
        steps = self.waiting.get(row)
        if not steps:
            return []
        answers = self.answers[row]
        lost = set()
        if result.ok:
            answers[result.step] = self.plan.steps[result.step].cells(result.text)
        else:
            lost.add(result.step)
        settled: list[RowJob | RowResult] = []
        for index in list(steps):  # in running order, so a failure reaches every later step
            needs = self.plan.steps[index].needs
            gone = next((n for n in needs if n in lost), None)
            if gone is None and not all(n in answers for n in needs):
                continue
            steps.remove(index)
            reason = needs_failed(self.plan.table, row, gone) if gone is not None else None
            if reason is None:
                try:
                    settled.append(self.plan.job(self.grid, row, index, answers))
                    continue
                except TemplateError as exc:
                    reason = str(exc)
            lost.add(index)
            settled.append(RowResult(row, error_text(reason), False, False, step=index))
        if not steps:
            del self.waiting[row], self.answers[row]
        return settled
