"""The limiter: how many requests are in flight and how fast they go, so that a run finds the
provider's ceiling by itself. ``--concurrency`` only caps the window (default ``CAP``).

Where the provider publishes its limits (OpenAI's ``x-ratelimit-*``, Anthropic's
``anthropic-ratelimit-*``, or the user's ``--rpm``/``--tpm``), a request bucket and a token
bucket pace the sends, and the window is sized by Little's law from those limits and the
latency this run measures: in flight = rate x latency, taken at its 90th percentile for the
spread, plus a square root of headroom (as Envoy's adaptive concurrency filter adds). The
buckets pace at the whole limit, and what the server says still ``remaining`` (``Credit``)
may go at once, beyond the pace: a provider whose bucket is full when a run starts (a
minute's allowance) is used at the speed it allows, not at a minute's average. Where the
headers show a bucket refilling at its limit (``Bucket.refills``), what went on that credit
is no charge on the pace, so a run that empties it goes on at the limit's pace at once; where
they show fixed slices, it is charged, and the pace holds the rest back to the next slice. The
first request sent on that credit that the server refuses ends the trust in it for the run.

Where it does not (Ollama, vLLM, llama.cpp, LM Studio), the window looks for the knee of the
server's latency against the requests in flight, as adaptive concurrency limiters do (TCP
Vegas, Netflix's concurrency-limits Gradient2, Envoy's gradient controller), with one change:
those compare each latency with the best seen, which a model's spread of answer times (one
answer 0.3 s, the next 2 s) reads as queueing. Here every answer is filed by how many requests
were in flight when it was sent (``Knee``): a server with free capacity answers as fast at 100
as at 4; one with N slots and a queue answers in proportion to the requests beyond N, which a
least-squares fit of a hinge finds, spread or not (the first wave is left out: it also waited
for its connections). The window grows
fast while no knee shows (slow start: ``GROWTH`` more for each answer), settles one step above
a knee, and every ``PROBE_EVERY`` updates probes above it (as far as a knee must show its rise,
or the knee is lost from the answers) and a quarter below (as BBR probes for bandwidth), so
that a knee that moved either way is found again from fresh answers. A hinge cannot tell a
knee at the least load kept from one below it, nor, over a narrow range, from one above it;
the run's quick answers can (TCP Vegas: past N slots latency grows as load / N), so such a
knee is read from how much slower each load's answers came, not halved past the slots, and
once a horizon, if the least load queued, the window looks below it.
A 503 halves the window, once per burst, and growth past that point is by one per window of
answers (TCP's slow-start threshold and AIMD). A 429 from a server that publishes no limits
says there is one all the same: the rate of the answers it let through in the seconds before
is that limit, so the run is paced at it from then on (a learned request bucket), a tenth
slower at each later 429 and a little faster with each answer (AIMD on the rate: with answers
in 0.04 s a window swings between 1 and 2 and cannot pace a rate; with too few answers yet to
measure, the window is halved instead).

A 429 comes back in a round trip, not after the model's latency, and carries the limit
headers, so a first wave beyond a provider's allowance is refused at once and paced after.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

CAP = 256
"""Default ceiling of the window: the most requests in flight without ``--concurrency``."""
START = 32
"""The first wave with no ``--concurrency``: small enough that a first wave past a provider's
allowance is mostly answered, large enough that a server without limits is near the cap within a
second (each answer adds ``GROWTH``)."""
GROWTH = 4
"""Slow start: the window grows by this much per answer while latency shows no knee."""
PROBE_EVERY = 8
"""Window updates between probes above a knee."""
DRAIN_CUT = 0.7
"""A window cut below this share of itself is more than a probe: the answers sent in the next
latency are not filed (they queued behind the old window's requests)."""
ASSUMED_ANSWER_TOKENS = 256
"""Token-bucket charge for the answer when a request sets no max_tokens."""


def request_tokens(payload: dict[str, Any]) -> int:
    """What a provider's token limit charges: the prompt (~4 chars a token) plus max_tokens."""
    chars = sum(len(str(m.get("content", ""))) for m in payload.get("messages", []))
    chars += len(str(payload.get("system", "")))
    return chars // 4 + 1 + int(payload.get("max_tokens") or ASSUMED_ANSWER_TOKENS)


BURST_SECONDS = 0.2
"""A bucket holds this many seconds' worth: providers enforce per-minute limits in short
slices, and a full second's burst landing late in one slice doubles up with the next."""


@dataclass
class Bucket:
    """Units per minute, refilled continuously, starting empty: it is made when a run is
    already sending, or from a cap that should not be spent in one burst."""

    per_minute: float
    level: float = 0.0
    stamp: float = 0.0
    refills: bool = False
    """Whether the server's headers describe its own bucket refilling at this rate (the time
    until full is what its missing units take): a request it let go on its own ``remaining``
    is then no charge on this one, and emptying it costs a run no more than its refill. A
    server counting in fixed slices must wait for the next slice instead: there what went on
    its count is charged, and the pace holds the rest back."""

    def refund(self, units: float) -> None:
        """Give back what a request the server's own count let go was charged."""
        if self.refills:
            self.level += units

    def wait_for(self, units: float, now: float) -> float:
        """Seconds until ``units`` are available; takes them (possibly into debt) at once."""
        rate = self.per_minute / 60.0
        capacity = max(rate * BURST_SECONDS, units)
        if self.stamp == 0.0:
            self.stamp = now
        self.level = min(capacity, self.level + (now - self.stamp) * rate)
        self.stamp = now
        self.level -= units
        return 0.0 if self.level >= 0 else -self.level / rate


RATE_SPAN = 5.0
"""Seconds of answers a learned rate is measured over: a provider's minute limit is enforced
in slices of a second or so, and older answers may predate a pause."""
RATE_ANSWERS = 8
"""Fewest answers in ``RATE_SPAN`` to measure a rate from; with fewer the window is halved."""
RATE_CUT = 0.9
"""A learned rate's step down at a later 429 (once per window of requests)."""
RATE_GAIN = 0.003
"""A learned rate's step up per answer: about one 429 in 35 answers at the limit, and twice the
rate in some 230 answers where the limit was lifted."""


MIN_PER_MINUTE = 1.0
"""The lowest limit a header may teach: a server's ``limit-requests: 0.001`` would otherwise
pace a run at one request every 17 hours."""
MAX_RESET_PAUSE = 60.0
"""The longest pause a ``reset`` header may order: providers' request limits reset within a
minute, and ``reset-requests: 1000h`` must not stop a run for weeks."""


def _number(headers: httpx.Headers, *names: str) -> float | None:
    """The first of ``names`` the headers hold, as a finite number; None when absent or not
    a number. A server's words, so every caller bounds it."""
    for name in names:
        value = headers.get(name)
        if value:
            try:
                number = float(value)
            except ValueError:
                return None
            return number if math.isfinite(number) else None
    return None


def _limit(headers: httpx.Headers, *names: str) -> float | None:
    """A published limit, no lower than ``MIN_PER_MINUTE``."""
    number = _number(headers, *names)
    return None if number is None else max(MIN_PER_MINUTE, number)


def _refilling(headers: httpx.Headers, kind: str, remaining: float) -> bool:
    """Whether the server's bucket for ``kind`` (requests or tokens) refills continuously at
    its limit, not in slices: Anthropic documents its limits so; OpenAI's ``reset`` (the time
    until the limit is whole again) then is what the missing units take to refill, within a
    unit's refill (``remaining`` is rounded down), a twentieth and the format's rounding."""
    if any(name.startswith("anthropic-ratelimit-") for name in headers):
        return True
    limit = _limit(headers, f"x-ratelimit-limit-{kind}")
    reset = reset_seconds(headers.get(f"x-ratelimit-reset-{kind}"))
    if limit is None or reset is None:
        return False
    unit = 60 / limit
    expected = (limit - remaining) * unit
    return abs(reset - expected) <= unit + 0.05 * expected + 0.01


def _count(headers: httpx.Headers, *names: str) -> float | None:
    """A ``remaining`` count, no lower than 0 (a huge one is bounded by the cap on the window,
    and a request it lets through that the server refuses ends the trust in it)."""
    number = _number(headers, *names)
    return None if number is None else max(0.0, number)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def reset_seconds(value: str | None) -> float | None:
    """OpenAI writes resets as durations (``1s``, ``6m0s``, ``120ms``)."""
    if not value:
        return None
    parts = _DURATION.findall(value)
    if not parts:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


@dataclass
class Ticket:
    """One request on the wire: when it left, how many were in flight with it, (once it is
    back) how long it took, its place in the run's sends, and whether it went on the server's
    credit."""

    sent: float
    load: int
    latency: float = 0.0
    number: int = 0
    """Requests sent up to this one that surely reached the server no later."""
    charged: float = 0.0
    """Their tokens."""
    credited: bool = False


@dataclass
class Credit:
    """What a server said it still allows (``remaining`` of requests or tokens) after one
    request, and the run's count of units that surely reached it no later (``at``).

    Every unit sent since is charged against it and none refilled, so what is left is never
    more than the server's own count: nothing refills a fixed window before it ends, and a
    continuous bucket only refills more. Spending it is safe, and it is what lets a run use a
    bucket a provider fills before it starts (a full minute's allowance) or the rest of a
    slice, instead of only the paced rate."""

    remaining: float
    at: float

    def left(self, spent: float) -> float:
        """What is left of it once ``spent`` units in all have gone."""
        return self.remaining - (spent - self.at)

    @staticmethod
    def best(kept: Credit | None, told: Credit) -> Credit:
        """The higher of two bounds (each holds until the limit changes)."""
        return told if kept is None or told.left(0) > kept.left(0) else kept


LEVEL_SAMPLES = 32
"""Latencies kept per level of load (or a round trip's, the load, if more): enough to average
a model's spread, few enough that a changed server shows within a window or two. Fewer than a
round trip's would be a moment's answers: with 256 in flight, 32 answers come back within a
tenth of a second, and a hiccup of the client's machine would read as a rise at that load."""
HORIZON = 256
"""Answers the knee is judged on (at least 16 windows' worth): an older one may describe a
server that has since changed."""
MIN_SAMPLES = 8
SIGNIFICANCE = 25.0
"""How much better (in residual variances) a knee must fit than no knee: about a chi-square of
one degree of freedom at 99.8%, for a fit that also picks where the knee is."""
MIN_RISE = math.log(1.5)
"""A knee counts only when latency beyond it has risen by half: noise at the top of the range
is no knee."""


def _level(load: int) -> int:
    """Each load up to 8 is its own level; above, levels are 2**(1/4) apart."""
    return load if load <= 8 else 8 + round(4 * math.log2(load / 8))


class _Level:
    """The last ``LEVEL_SAMPLES`` (log load, log latency, answer number) of one level, with
    their sums."""

    def __init__(self) -> None:
        self.points: deque[tuple[float, float, int]] = deque()
        self.sx = self.sy = self.syy = 0.0

    def add(self, x: float, y: float, stamp: int, keep: int) -> None:
        while len(self.points) >= keep:
            self._drop()
        self.points.append((x, y, stamp))
        self.sx, self.sy, self.syy = self.sx + x, self.sy + y, self.syy + y * y

    def trim(self, oldest: int) -> None:
        while self.points and self.points[0][2] < oldest:
            self._drop()

    def _drop(self) -> None:
        x, y, _ = self.points.popleft()
        self.sx, self.sy, self.syy = self.sx - x, self.sy - y, self.syy - y * y


class Knee:
    """Latency against the requests in flight when each was sent, and where it starts to rise.

    The model is a server with N slots: latency S up to N in flight, S x n / N beyond (a queue,
    or slots sharing one processor). Fitted on log latency, where a model's spread is about the
    same at every level, against the same level with no knee; the knee is kept when it fits
    markedly better and latency beyond it has risen by at least ``MIN_RISE``.
    """

    def __init__(self) -> None:
        self.levels: dict[int, _Level] = {}
        self.count = 0
        self.at_lowest = False
        """Whether the last knee found lies at the least load kept: every answer may have been
        past it, and the real knee may be lower still."""

    def add(self, load: int, latency: float) -> None:
        self.count += 1
        level = self.levels.setdefault(_level(load), _Level())
        level.add(math.log(max(1, load)), math.log(max(latency, 1e-4)), self.count,
                  max(LEVEL_SAMPLES, load))

    def fit(self, horizon: int) -> float | None:
        """The number of requests the server takes without queueing, judged on the last
        ``horizon`` answers, or None if no knee shows."""
        for level in self.levels.values():
            level.trim(self.count - horizon)
        levels = [v for _, v in sorted(self.levels.items()) if v.points]
        counts = [len(v.points) for v in levels]
        total = sum(counts)
        if total < MIN_SAMPLES:
            return None
        xs = [v.sx / c for v, c in zip(levels, counts, strict=True)]
        sy = sum(v.sy for v in levels)
        syy = sum(v.syy for v in levels)
        free = syy - sy * sy / total
        best, knee, base = free, None, 0.0
        lowest = free  # the fit of a knee below every load kept: all of them queue
        between = [(a + b) / 2 for a, b in itertools.pairwise(xs)]
        for k in sorted(xs[:-1] + between):
            hinge = [max(0.0, x - k) for x in xs]
            a = (sy - sum(c * h for c, h in zip(counts, hinge, strict=True))) / total
            sse = sum(v.syy - 2 * (a + h) * v.sy + c * (a + h) ** 2
                      for v, c, h in zip(levels, counts, hinge, strict=True))
            if k == xs[0]:
                lowest = sse
            if sse < best:
                best, knee, base = sse, k, a
        margin = SIGNIFICANCE * max(best, 1e-9) / max(1, total - 2)
        if (knee is not None and xs[-1] - knee >= MIN_RISE and free - best >= margin
                and (knee <= xs[1] or lowest - best >= margin)
                and self._borne_out(levels, xs, knee, base)):
            self.at_lowest = knee == xs[0]
            return math.exp(knee)
        # A knee above the lowest loads kept that fits no better than one below them all is
        # noise on a queue (the answers to a probe below waited behind the window before it):
        # if the knee below them all fits markedly better than none, every load kept queues,
        # however narrow their range.
        self.at_lowest = free - lowest >= margin
        return math.exp(xs[0]) if self.at_lowest else None

    def vegas(self, quick: float) -> float:
        """The slots as TCP Vegas reads them from the base latency ``quick``. A hinge cannot
        tell a knee at the least load kept from one below it, nor, over a narrow range, from
        one above it; latencies can: past N slots latency grows as load / N. Going up the
        levels kept at the last fit, each reads load x the least load's latency / its own,
        while it has less than one request more queued than the least load (Vegas' alpha);
        the first with more stops it (a level further up says nothing of now). The most read
        is scaled by how much slower the least load came than ``quick``: a least load that
        queued reads fewer slots, one at the base latency reads itself and the levels with
        room above it (a ``quick`` stale from the first wave's connections, slower than now,
        scales nothing). A level with fewer than ``MIN_SAMPLES`` answers is read only if no
        level has more: a few sent at a low load behind older requests came as slow as those."""
        kept = [v for _, v in sorted(self.levels.items()) if v.points]
        kept = [v for v in kept if len(v.points) >= MIN_SAMPLES] or kept
        base = math.exp(kept[0].sy / len(kept[0].points))
        best = 0.0
        for level in kept:
            load = math.exp(level.sx / len(level.points))
            reading = load * min(1.0, base / math.exp(level.sy / len(level.points)))
            best = max(best, reading)
            if reading < load - 1:
                break
        return best * min(1.0, quick / base)

    @staticmethod
    def _borne_out(levels: list[_Level], xs: list[float], knee: float, base: float) -> bool:
        """Whether the answers at the top of the loads (``MIN_RISE`` past the knee) rose at
        least three quarters as much as the hinge says: past a real knee latency rises as
        fast as load (more in flight buys no more rows a second); a fit pulled by a few slow
        levels elsewhere (noise, a moment's hiccup) has the top near the flat part, and where
        latency rises slower than load, more in flight still buys rate."""
        top = [(v, x) for v, x in zip(levels, xs, strict=True) if x - knee >= MIN_RISE]
        count = sum(len(v.points) for v, _ in top)
        risen = sum(v.sy for v, _ in top) / count - base
        said = sum(len(v.points) * (x - knee) for v, x in top) / count
        return risen >= 0.75 * said


class Limiter:
    """Shared by every request of one provider and model in a run.

    ``cap`` is the most requests in flight; the window starts at ``start`` (the cap when
    not given). With ``adaptive`` off the cap is the server's known capacity (the embedded
    model's slots): the window stays there unless the server pushes back.
    """

    def __init__(self, cap: int = CAP, rpm: float | None = None, tpm: float | None = None,
                 *, start: int | None = None, adaptive: bool = True) -> None:
        self.cap = cap
        self.adaptive = adaptive
        self._window = float(min(cap, start or cap))
        self.start = self.window
        self.threshold = float(cap)
        """Slow start stops here: half the window at the last 429 or 503, or the last knee."""
        self.in_flight = 0
        self.user_rpm, self.user_tpm = rpm, tpm
        self.requests = Bucket(rpm) if rpm else None
        self.tokens = Bucket(tpm) if tpm else None
        self.limits_sent = 0.0
        """When the request that told the limits in force was sent: an older answer's headers
        describe limits that may since have changed."""
        self.paused_until = 0.0
        self.pauses = 0
        self.last_cut = 0.0
        self.latencies: deque[float] = deque(maxlen=256)
        self.answered_at: deque[float] = deque(maxlen=256)
        self.learned = False
        """Whether ``requests`` is a rate learned from headerless 429s, not a published one."""
        self.knee = Knee()
        self.knee_at: float | None = None
        self.answered_load = 0
        """The most requests in flight that one filed answer was sent with: slow start goes
        no further than twice that, and not past the start before one is filed (the first
        wave's answers also waited for connections and say nothing of the server's queue), so
        it never outruns what the answers have shown."""
        self.first_answer: float | None = None
        """When the first answer came: requests sent before it also waited for connections to
        open, so their latency does not describe the server's queue."""
        self.drained = 0.0
        """After a cut of the window, when the queue the old window built at the server will
        have drained (one latency later): requests sent before then waited in it, so their
        latency is the old load's, not the one they were sent at, and would hide the knee."""
        self.fitted = 0
        """How many answers the knee had filed at the last fit: with none since, the window
        holds (a decision on the same answers would repeat the last one, cut on cut)."""
        self.quick = math.inf
        """The run's base latency, as TCP Vegas keeps the least round trip of a connection:
        the lowest tenth percentile of the recent answers seen at any update (not their
        fastest: a model's spread has outliers either way), the first wave's too: its first
        answers are the ones that did not queue. Not the recent ones' alone: once every recent
        answer waited in the queue, they are no base, and a window 50 deep in a 4-slot
        server's queue read its own queue as the slots and stayed there."""
        self.looked_below = -HORIZON
        """How many answers the knee had filed at the last probe below the least load."""
        self.charged = 0.0
        self.sent = 0
        self.out = 0
        self.out_tokens = 0.0
        """Requests and tokens sent, counted as they leave (``sent`` counts them as they
        queue): a server's ``remaining`` is reckoned against what left after the request
        that told it."""
        self.request_credit: Credit | None = None
        self.token_credit: Credit | None = None
        self.credit_trusted = True
        """Off once a request sent on credit is refused: that server enforces a finer slice
        than its ``remaining`` describes, and only the pace is safe there."""
        self.since_update = 0
        self.updates = 0
        self._changed = asyncio.Condition()

    @property
    def window(self) -> int:
        """How many requests may be in flight now."""
        return max(1, int(self._window))

    @property
    def published(self) -> bool:
        """Whether the limits are known (headers or the user's caps): then the buckets pace."""
        return self.requests is not None or self.tokens is not None

    async def acquire(self, tokens: int) -> Ticket:
        """Wait for a place in the window, then for the buckets (unless the server's own
        count says it allows this request now); never for long at once."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.window)
            self.in_flight += 1
            load = self.in_flight
        self.sent += 1
        self.charged += tokens
        while True:
            now = time.monotonic()
            paced = 0.0
            if self.requests is not None:
                paced = self.requests.wait_for(1, now)
            if self.tokens is not None:
                paced = max(paced, self.tokens.wait_for(tokens, now))
            credited = paced > 0 and self._on_credit(tokens)
            wait = max(self.paused_until - now, 0.0 if credited else paced)
            pauses = self.pauses
            if wait > 0:
                await asyncio.sleep(wait)
            if self.pauses == pauses:  # else a 429 came meanwhile: take a new place in line
                self.out += 1
                self.out_tokens += tokens
                # A request still unanswered may reach the server after this one: counted
                # as sent after it, so that this one's ``remaining`` is never overspent.
                ahead = self.in_flight - 1
                if credited:
                    for bucket, units in ((self.requests, 1.0), (self.tokens, tokens)):
                        if bucket is not None:
                            bucket.refund(units)
                return Ticket(time.monotonic(), load, number=self.out - ahead,
                              charged=self.out_tokens - ahead * self.charged / self.sent,
                              credited=credited)

    def _on_credit(self, tokens: float = 0.0) -> bool:
        """Whether what the server told covers one more request (and its ``tokens``) of
        every published limit now. Never past a limit the user set: ``--rpm`` may be a share
        of a key other jobs use too."""
        if not self.credit_trusted:
            return False
        if self.requests is not None and not (
                self.request_credit is not None and not self.user_rpm
                and self.request_credit.left(self.out + 1) >= 0):
            return False
        return self.tokens is None or (
            self.token_credit is not None and not self.user_tpm
            and self.token_credit.left(self.out_tokens + tokens) >= 0)

    def _headroom(self) -> float:
        """Requests what the server told allows beyond the paced ones: the window makes room
        for them."""
        if not self._on_credit():
            return 0.0
        room = [] if self.request_credit is None else [self.request_credit.left(self.out)]
        if self.token_credit is not None and self.sent:
            room.append(self.token_credit.left(self.out_tokens) / (self.charged / self.sent))
        return max(0.0, min(room, default=0.0))

    async def release(self, ticket: Ticket | None = None) -> None:
        if ticket is not None:
            ticket.latency = time.monotonic() - ticket.sent
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def succeeded(self, headers: httpx.Headers, ticket: Ticket | None = None) -> None:
        """Learn limits from the headers, and the latency and load of one answer; move the
        window."""
        self._learn(headers, ticket)
        self.answered_at.append(time.monotonic())
        if self.learned:
            self._speed_up()
        if ticket is None:
            return
        self.latencies.append(ticket.latency)
        if self.first_answer is None:
            self.first_answer = ticket.sent + ticket.latency
        if ticket.sent >= max(self.first_answer, self.drained):
            self.knee.add(ticket.load, ticket.latency)
            self.answered_load = max(self.answered_load, ticket.load)
        self.since_update += 1
        busy = self.in_flight + 1 >= 0.75 * self._window  # else the run has too few rows left
        starting = self._window < self.threshold  # look for a knee often while growing fast
        if self.since_update >= (4 if starting else max(4, self.window // 4)):
            self._update(busy, ticket.sent + ticket.latency)
        elif busy and not self.published and self.knee_at is None:
            self._grow()

    def _update(self, busy: bool, now: float) -> None:
        """Every few answers (``now`` the last one's arrival): the window from Little's law,
        or from the knee."""
        self.since_update = 0
        self.updates += 1
        if self.published:
            rate = self._rate()
            if rate is not None:
                self._window = min(self.cap, self._little(rate) + self._headroom())
            return
        if self.latencies:  # the first wave's first answers too: the quickest of the run
            ordered = sorted(self.latencies)
            self.quick = min(self.quick, ordered[len(ordered) // 10])
        if self.adaptive and self.knee.count == self.fitted:  # none filed (a queue drains)
            return
        self.fitted = self.knee.count
        found = self.knee.fit(max(HORIZON, 16 * self.window)) if self.adaptive else None
        self.knee_at = found
        if found is None:
            if busy:
                self._grow()
            return
        lowest = found
        if self.knee.at_lowest:
            found = self._slots(lowest)
        target = round(found) + max(1, int(found / 8))
        self.threshold = float(target)  # a knee is a limit too: past it, grow by one at a time
        if target < DRAIN_CUT * self._window and self.latencies:  # not a probe: a real cut
            self.drained = now + statistics.median(self.latencies)
        phase = self.updates % PROBE_EVERY
        if phase == 0:  # probe above the knee, then below it, to find it again if it moved
            # as far above as a knee must show its rise, or the knee is lost from the answers
            target = max(target + max(1, target // 4), math.ceil(found * math.exp(MIN_RISE)))
        elif phase == 1:  # below the least load kept too, if the knee may lie there
            target -= max(1, target // 4)
            # (only if the Vegas reading has the least load queue: one at the base latency
            # has room, and looking below it would leave slots idle for nothing)
            if self.knee.at_lowest and found <= lowest - 1 and self._look_below():
                target = min(target, int(0.75 * lowest))
            # it lasts until the requests it cut are answered, then for its own answers: none
            # is sent at the lower load before then
            self.since_update = min(0, target - self.window)
        self._window = float(max(1, min(self.cap, target)))

    def _look_below(self) -> bool:
        """Whether to probe below the least load kept: once a horizon of answers, as long as
        the answers it brings stay in the fit (each costs a slot left idle while it lasts)."""
        if self.knee.count - self.looked_below < HORIZON:
            return False
        self.looked_below = self.knee.count
        return True

    def _slots(self, lowest: float) -> float:
        """The knee when the hinge put it at the least load kept (every load may be past it,
        or, over a narrow range, none): read from the run's quick answers as TCP Vegas reads
        a queue from the base round trip (``Knee.vegas``). Without them, half the least
        load."""
        if self.quick == math.inf:
            return max(1.0, lowest / 2)
        return max(1.0, self.knee.vegas(self.quick))

    def _grow(self) -> None:
        """Fast below the threshold (no 429 or 503 yet), by one per window above it."""
        if self._window < self.threshold and self.adaptive:
            seen = 2.0 * self.answered_load if self.answered_load else self.start
            self._window = max(self._window, min(self.cap, self._window + GROWTH, seen))
        else:
            self._window = min(float(self.cap), self._window + 1 / self._window)

    def _rate(self) -> float | None:
        """Rows a second the buckets allow, at this run's tokens per request."""
        rates = []
        if self.requests is not None:
            rates.append(self.requests.per_minute / 60)
        if self.tokens is not None and self.sent:
            rates.append(self.tokens.per_minute / 60 / (self.charged / self.sent))
        return min(rates) if rates else None

    def _little(self, rate: float) -> float:
        """In flight = rate x latency (90th percentile of recent answers), plus headroom."""
        if not self.latencies:
            return self._window
        ordered = sorted(self.latencies)
        high = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        inflight = rate * high
        return float(math.ceil(inflight + math.sqrt(inflight)) + 1)

    def _credit(self, headers: httpx.Headers, ticket: Ticket) -> None:
        """Each ``remaining`` told, less what was sent after it, bounds what the server
        allows now from below: keep the highest bound of each limit."""
        requests = _count(headers, "x-ratelimit-remaining-requests",
                          "anthropic-ratelimit-requests-remaining")
        if requests is not None:
            self.request_credit = Credit.best(self.request_credit,
                                              Credit(requests, ticket.number))
            if self.requests is not None:
                self.requests.refills = _refilling(headers, "requests", requests)
        tokens = _count(headers, "x-ratelimit-remaining-tokens",
                        "anthropic-ratelimit-tokens-remaining",
                        "anthropic-ratelimit-input-tokens-remaining")
        if tokens is not None:
            self.token_credit = Credit.best(self.token_credit, Credit(tokens, ticket.charged))
            if self.tokens is not None:
                self.tokens.refills = _refilling(headers, "tokens", tokens)

    def throttled_by_server(self, headers: httpx.Headers, wait: float | None,
                            ticket: Ticket | None = None, *, limited: bool = True) -> None:
        """A 429 (``limited``) or a headerless 503: pause everyone for the server's wait.
        Where the limits are known, the buckets set the pace, so they are emptied and refill
        only from the end of the pause: a pause saved up as a burst would overrun the server's
        next slice; the requests already waiting for the buckets take their places again after
        it. Where they are not, a 429 teaches a rate and a 503 halves the window; either once
        for the requests sent under one window (a 429 to a request sent before the last cut
        says nothing new), as TCP cuts once per round trip (AIMD)."""
        now = time.monotonic()
        self._learn(headers, ticket)
        if limited and ticket is not None and ticket.credited:
            self.credit_trusted = False
        if wait:
            self.paused_until = max(self.paused_until, now + wait)
        sent = ticket.sent if ticket is not None else now - 1.0
        if sent > self.last_cut and (self.learned or not self.published):
            self.last_cut = now
            self._slow_down(now, limited)
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.level, bucket.stamp = 0.0, max(now, self.paused_until)
        self.pauses += 1

    def _slow_down(self, now: float, limited: bool) -> None:
        """A headerless server refused: a tenth off a learned rate, else learn the rate of the
        answers it let through, else (a 503, or too few answers yet) half the window."""
        if self.learned and self.requests is not None:
            self.requests.per_minute = max(MIN_PER_MINUTE, self.requests.per_minute * RATE_CUT)
            return
        recent = [t for t in self.answered_at if t >= now - RATE_SPAN]
        if limited and len(recent) >= RATE_ANSWERS and now > recent[0]:
            per_second = len(recent) / (now - recent[0])  # to now: a burst is no rate
            self.requests, self.learned = Bucket(per_second * 60), True
            return
        self._window = max(1.0, self._window / 2)
        self.threshold = self._window

    def _speed_up(self) -> None:
        """A learned rate creeps up with each answer, and is let go once the window would
        not reach it: then it paces nothing, and the server may have lifted its limit."""
        assert self.requests is not None
        self.requests.per_minute *= 1 + RATE_GAIN
        if self.latencies and self.requests.per_minute / 60 * min(self.latencies) > self.cap:
            self.requests, self.learned = None, False

    def overloaded(self, wait: float | None) -> None:
        """Anthropic's 529 is everyone's overload: pause, but keep the learned rate."""
        if wait:
            self.paused_until = max(self.paused_until, time.monotonic() + wait)

    def measured(self) -> dict[str, float]:
        """What this run learned, for the next estimate of this model's time."""
        found: dict[str, float] = {"window": float(self.window)}
        if self.latencies:
            found["latency"] = statistics.median(self.latencies)
        if self.requests is not None:
            found["rpm"] = self.requests.per_minute
        if self.tokens is not None:
            found["tpm"] = self.tokens.per_minute
        return found

    def _learn(self, headers: httpx.Headers, ticket: Ticket | None) -> None:
        sent = ticket.sent if ticket is not None else time.monotonic()
        if sent < self.limits_sent:
            return
        rpm = _limit(headers, "x-ratelimit-limit-requests",
                     "anthropic-ratelimit-requests-limit")
        tpm = _limit(headers, "x-ratelimit-limit-tokens", "anthropic-ratelimit-tokens-limit",
                     "anthropic-ratelimit-input-tokens-limit")
        if rpm or tpm:
            self.limits_sent = sent
        if rpm:
            rpm = min(rpm, self.user_rpm or rpm)
            if self.requests is None or self.requests.per_minute != rpm:
                self.requests, self.learned = Bucket(rpm), False
                self.request_credit = None  # told under the old limit
        if tpm:
            tpm = min(tpm, self.user_tpm or tpm)
            if self.tokens is None or self.tokens.per_minute != tpm:
                self.tokens, self.token_credit = Bucket(tpm), None
        if ticket is not None:
            self._credit(headers, ticket)
        # Nothing left until a slice ends (``reset`` after the request was counted): for a
        # bucket refilling at its limit, the time until it is whole again is no pause, and
        # the pace sends the next request when one unit is back.
        remaining = headers.get("x-ratelimit-remaining-requests", "").strip()
        reset = reset_seconds(headers.get("x-ratelimit-reset-requests"))
        if remaining == "0" and reset and not (self.requests and self.requests.refills):
            self.paused_until = max(self.paused_until, sent + min(reset, MAX_RESET_PAUSE))
