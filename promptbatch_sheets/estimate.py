"""Before a run: how many tokens, dollars and seconds it will take (no model call).

A request costs a fixed overhead (the chat template or message framing) plus its characters
over a characters-per-token ratio; an answer costs its typical length, trimmed by max_tokens.
Those numbers come from the model's own past answers in the cache when there are enough of them,
else from defaults per provider measured on the sample workbooks. Time comes from what the
model's last realtime run measured on this machine (``timing``) once there is one, else it is
a guess, and the estimate says which.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from .budget import ASSUMED_MAX_ANSWER_TOKENS
from .limits import START

CHARS_PER_TOKEN = 4.0
"""English text averages about four characters per token in GPT and Llama tokenizers."""
LOCAL_SECONDS_PER_TOKEN = (0.001, 0.009)
"""(prompt, answer) seconds per token of the embedded model on two cores, measured on the
demo workbook; it is CPU-bound, so time does not shrink with concurrency."""
HOSTED_LATENCY_S = 1.0
"""Typical time to a full short answer from a hosted API, when none was measured."""
BATCH_API_PROVIDERS = frozenset({"openai", "anthropic"})
"""Providers whose Batch API answers within a day at half the realtime price."""
BATCH_DISCOUNT = 0.5
MIN_HISTORY = 20
"""Past answers of a model needed before they replace the provider's defaults."""
MIN_SPREAD = 0.25
"""Prompt lengths must vary this much (standard deviation over mean) to fit the overhead too;
prompts of one template are often alike, and a line through a tight cluster is noise."""

History = Sequence[tuple[int, int, int]]
"""(characters sent, prompt_tokens, completion_tokens) of past answers, as the cache keeps."""


@dataclass(frozen=True)
class Family:
    """Defaults for a provider when its model has too little history in the cache."""

    overhead: float
    """Tokens a request adds to its text, with the server's own default system prompt."""
    system_overhead: float
    """The same when we send a system prompt (its characters are then counted as text)."""
    chars_per_token: float
    answer_tokens: float
    """Typical answer length with no max_tokens."""


HOSTED = Family(overhead=7, system_overhead=11, chars_per_token=CHARS_PER_TOKEN,
                answer_tokens=60)
"""OpenAI counts 3 tokens per message plus 3 to prime the reply; Anthropic is close."""
FAMILIES = {
    "local": Family(overhead=30, system_overhead=15, chars_per_token=4.1, answer_tokens=35),
}
"""SmolLM2's chat template is 15 tokens and its default system prompt 15 more (llama.cpp's
/apply-template and /tokenize); its answers on the sample workbooks averaged 20-47 tokens."""


@dataclass(frozen=True)
class Calibration:
    """How one model turns a request into tokens, and how long it answers."""

    overhead: float
    chars_per_token: float
    answer_tokens: float
    basis: str
    """Where the numbers come from, for the preview to say."""
    answers: tuple[int, ...] = ()
    """Past answer lengths, when calibrated from history: a cap is applied to each of them."""

    def prompt_tokens(self, chars: int) -> float:
        return self.overhead + chars / self.chars_per_token

    def answer(self, max_tokens: int | None) -> float:
        """Expected answer length under a cap: a cap near the typical length trims more than
        it seems, since answers spread widely (taken as exponential when there is no history)."""
        if self.answers:
            return statistics.fmean(min(a, max_tokens or a) for a in self.answers)
        if max_tokens is None:
            return self.answer_tokens
        return self.answer_tokens * -math.expm1(-max_tokens / self.answer_tokens)


@dataclass(frozen=True)
class Estimate:
    prompt_tokens: int
    completion_tokens: int
    """Typical: what the answers will most likely add up to."""
    cost_usd: float | None
    """None when the model is not in the price table."""
    seconds: float
    completion_tokens_max: int = 0
    """Every answer at max_tokens (or at the budget's assumed worst case when none is set)."""
    cost_max_usd: float | None = None
    batch_cost_usd: float | None = None
    """The same answers through the provider's Batch API; None where there is none."""
    basis: str = ""
    time_basis: str = ""
    """Where the time comes from: this model's last run here, or a guess."""


@cache
def price_table() -> dict[str, list[float]]:
    text = files("promptbatch_sheets").joinpath("prices.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``provider:model``."""
    entry = price_table().get(model)
    return (entry[0], entry[1]) if entry else None


def tokens(text: str) -> int:
    """A quick upper-side guess for one prompt, used to reserve budget before sending."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def request_chars(prompt: str, system: str | None) -> int:
    """Characters a request sends: what the cache records to calibrate tokens per character."""
    return len(prompt) + len(system or "")


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    rates = price(model)
    if rates is None:
        return None
    return (prompt_tokens * rates[0] + completion_tokens * rates[1]) / 1_000_000


def fit_prompt_tokens(history: History, overhead: float) -> tuple[float, float]:
    """(overhead, chars per token) from past requests: a least-squares line when their lengths
    vary enough, else the given overhead and the ratio that matches their mean."""
    chars = [float(h[0]) for h in history]
    used = [float(h[1]) for h in history]
    mean_chars = statistics.fmean(chars)
    if statistics.pstdev(chars) >= MIN_SPREAD * mean_chars:
        slope, intercept = statistics.linear_regression(chars, used)
        if slope > 0 and intercept >= 0:
            return intercept, 1 / slope
    text_tokens = max(statistics.fmean(used) - overhead, 1.0)
    return overhead, max(mean_chars, 1.0) / text_tokens


def calibrate(model: str, history: History, system: bool = False) -> Calibration:
    """The model's own numbers when it has answered enough before, else its provider's."""
    provider = model.partition(":")[0]
    family = FAMILIES.get(provider, HOSTED)
    overhead = family.system_overhead if system else family.overhead
    if len(history) < MIN_HISTORY:
        return Calibration(overhead, family.chars_per_token, family.answer_tokens,
                           f"defaults for {provider}: {overhead:.0f} tokens per request + "
                           f"{family.chars_per_token:g} characters per token, answers of "
                           f"~{family.answer_tokens:.0f} tokens")
    overhead, chars_per_token = fit_prompt_tokens(history, overhead)
    answers = tuple(h[2] for h in history)
    return Calibration(overhead, chars_per_token, statistics.fmean(answers),
                       f"your last {len(history):,} answers from {model}: {overhead:.0f} tokens "
                       f"per request + {chars_per_token:.1f} characters per token", answers)


def local_seconds(prompt_tokens: float, completion_tokens: float) -> float:
    """The embedded model's time at its default speed: it is CPU-bound, so it is the tokens'."""
    return (prompt_tokens * LOCAL_SECONDS_PER_TOKEN[0]
            + completion_tokens * LOCAL_SECONDS_PER_TOKEN[1])


def timing(model: str, requests: int, prompt_tokens: int, completion_tokens: int,
           concurrency: int | None, speed: dict[str, float] | None) -> tuple[float, str]:
    """Seconds for ``requests`` requests, and what that figure rests on.

    ``speed`` is what the model's last realtime run measured (``Limiter.measured`` plus its
    requests, seconds and tokens). The embedded model is bound by this machine's CPU: its
    time scales with the tokens, at the speed measured. A server is bound by its window and
    limits: rows a second = window / latency (Little's law), at most what the limits allow.
    """
    provider = model.partition(":")[0]
    if not requests:
        return 0.0, "nothing to send"
    if not speed or not speed.get("requests") or not speed.get("seconds"):
        if provider == "local":
            return (local_seconds(prompt_tokens, completion_tokens),
                    "a guess: the embedded model's speed on two cores; a run measures yours")
        in_flight = min(concurrency or START, START)
        return (math.ceil(requests / in_flight) * HOSTED_LATENCY_S,
                f"a guess: {in_flight} in flight, {HOSTED_LATENCY_S:g} s each; a run measures "
                "the server's own speed and limits")
    if provider == "local":
        past = local_seconds(speed.get("prompt_tokens", 0), speed.get("completion_tokens", 0))
        scale = speed["seconds"] / past if past else 1.0
        return (local_seconds(prompt_tokens, completion_tokens) * scale,
                f"your last run here: {speed.get('completion_tokens', 0) / speed['seconds']:,.1f}"
                f" answer tokens a second at {speed.get('window', 1):.0f} at once")
    latency = speed.get("latency") or speed["seconds"] / speed["requests"]
    window = min(concurrency or math.inf, speed.get("window", 1.0))
    rates = [window / latency]
    if speed.get("rpm"):
        rates.append(speed["rpm"] / 60)
    per_request = (prompt_tokens + completion_tokens) / requests
    if speed.get("tpm") and per_request:
        rates.append(speed["tpm"] / 60 / per_request)
    rate = min(rates)
    return (requests / rate + latency,
            f"your last run of {model}: {latency:.2f} s an answer, {rate:,.1f} a second")


def estimate(model: str, prompts: list[str], max_tokens: int | None, concurrency: int | None,
             *, system: bool = False, history: History = (),
             speed: dict[str, float] | None = None) -> Estimate:
    """Tokens from calibrated text length, cost from the price table, time from the speed
    last measured (``timing``). ``prompts`` are the texts requests send, system prompts
    included; ``system`` says whether they carry one (the message framing differs)."""
    provider = model.partition(":")[0]
    calibration = calibrate(model, history, system)
    prompt_tokens = round(sum(calibration.prompt_tokens(len(p)) for p in prompts))
    completion_tokens = round(calibration.answer(max_tokens) * len(prompts))
    completion_max = (max_tokens or ASSUMED_MAX_ANSWER_TOKENS) * len(prompts)
    seconds, time_basis = timing(model, len(prompts), prompt_tokens, completion_tokens,
                                 concurrency, speed)
    realtime = cost(model, prompt_tokens, completion_tokens)
    batch = (realtime * BATCH_DISCOUNT
             if realtime is not None and provider in BATCH_API_PROVIDERS else None)
    return Estimate(prompt_tokens, completion_tokens, realtime, seconds, completion_max,
                    cost(model, prompt_tokens, completion_max), batch, calibration.basis,
                    time_basis)
