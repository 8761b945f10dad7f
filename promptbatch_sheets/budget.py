"""``--budget USD``: stop sending before the next request could cross the cap.

Each request in flight holds a worst-case reservation (its prompt plus the longest answer it
may get); an answer's real usage replaces its reservation. So the total never passes the cap,
and the rows not sent stay empty for a later run, not marked as errors.
"""

from __future__ import annotations

from collections.abc import Callable

from .providers import Completion

ASSUMED_MAX_ANSWER_TOKENS = 1024
"""Worst case for an answer when the run sets no max_tokens."""


class Budget:
    def __init__(self, limit_usd: float, price: Callable[[int, int], float],
                 max_tokens: int | None) -> None:
        self.limit = limit_usd
        self.price = price
        self.answer_tokens = max_tokens or ASSUMED_MAX_ANSWER_TOKENS
        self.spent = 0.0
        self.reserved = 0.0
        self.exhausted = False

    def reserve(self, prompt_tokens: int) -> float | None:
        """The reservation for one more request, or None (and stop) if it could cross the cap."""
        worst = self.price(prompt_tokens, self.answer_tokens)
        if self.exhausted or self.spent + self.reserved + worst > self.limit:
            self.exhausted = True
            return None
        self.reserved += worst
        return worst

    def settle(self, reservation: float, completion: Completion | None) -> None:
        """Replace a reservation by what the answer really cost (nothing if it failed)."""
        self.reserved -= reservation
        if completion is not None:
            self.spent += self.price(completion.prompt_tokens, completion.completion_tokens)
