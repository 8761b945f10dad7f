"""What a prompt is sent with, and so its answer key: the run's parameters, its step's schema,
the row's own system prompt (a ``<system>`` block) and the variation it asks for."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from .plan import RowJob
from .providers import Params
from .schema import Schema
from .store import key_function


def structured(params: Params, schema: Schema) -> Params:
    """The request parameters of a step whose answers must fit ``schema``."""
    return replace(params, schema=schema.text())


class Requests:
    """The parameters and the answer key of each job of one run. A job without a system
    block or a variation is keyed exactly as before either existed, so answers cached then
    stay valid; one key function is made per distinct set of parameters, as a big rerun
    spends much of its time hashing."""

    def __init__(self, label: str, params: Params, schemas: Mapping[int, Schema]) -> None:
        self.label = label
        self.base = params
        self.steps = {step: structured(params, schema) for step, schema in schemas.items()}
        self._keys: dict[tuple[int, str | None, int | None], Callable[[str], str]] = {}

    def params(self, job: RowJob) -> Params:
        """What ``job`` is sent with."""
        params = self.steps.get(job.step, self.base)
        if job.system is None and job.seed is None:
            return params
        system = params.system if job.system is None else job.system
        return replace(params, system=system, seed=job.seed)

    def key(self, job: RowJob) -> str:
        """The answer key of ``job``."""
        which = (job.step, job.system, job.seed)
        if which not in self._keys:
            self._keys[which] = key_function(self.label, self.params(job))
        return self._keys[which](job.prompt)
