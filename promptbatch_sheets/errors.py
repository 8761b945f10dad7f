"""Every exception promptbatch raises on purpose, in three families by who hears of it.

    Exception
     ├── PromptBatchError       a mistake in the user's input or setup. The CLI prints it as
     │    │                     one line and exits 2; serve answers 400 with it. Raised before
     │    │                     any model call, so it costs nothing.
     │    ├── TemplateError     the prompt template cannot be parsed or rendered
     │    ├── TableError        the sheet holds no usable table
     │    ├── ConfigError       a setting is missing or wrong: model, base URL, a number
     │    │    └── SetupError   this machine lacks something: the embedded model, an API
     │    │                     key, an optional package (xlwings); names what provides it
     │    ├── WorkbookError     a file cannot be read or written safely
     │    ├── CacheError        the answer cache cannot hold what must outlive the run
     │    └── BatchError        a provider Batch API call failed
     ├── RowError               one row's failure. Its text lands in the row's answer cell
     │    │                     after ``#ERROR:``; the run goes on, and a rerun retries it.
     │    ├── ProviderError     a request failed for good (after the retries it deserved)
     │    └── SchemaMismatch    a reply is not the JSON the row's fields ask for
     ├── BadRequest             a request to ``promptbatch serve`` is malformed: its text goes
     │                          back with a 400 (or 413), and nothing runs
     └── Interrupted            the user stopped a run (Ctrl-C): what came back is kept, and
                                the CLI says so and exits 130

``providers.retry.Retryable`` never leaves the providers: it is a passing fault that the retry
loop turns into another attempt, or at the end into a ProviderError.
"""

from __future__ import annotations


class PromptBatchError(Exception):
    """A mistake in the user's input or setup: a message that names the place and the fix."""


class TemplateError(PromptBatchError):
    """The prompt template cannot be parsed or rendered."""


class TableError(PromptBatchError):
    """The sheet holds no usable table (header row, data rows, output column)."""


class ConfigError(PromptBatchError):
    """A setting is missing or wrong: model, key, base URL, numbers out of range."""


class SetupError(ConfigError):
    """Something this machine lacks before a run can start: the embedded model, an API key,
    an optional package. The message names the command that provides it."""


class WorkbookError(PromptBatchError):
    """A file cannot be read or written safely."""


class CacheError(PromptBatchError):
    """The answer cache cannot be used for something that must outlive the run (a Batch API
    job's record); the message names the file and the fix."""


class BatchError(PromptBatchError):
    """A Batch API call failed; the message names the call and the server's reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status, when the server answered."""


class RowError(Exception):
    """One row's failure; ``str()`` is what its cell says after ``#ERROR:``."""


class ProviderError(RowError):
    """A request that failed for good; its text lands in the row's cell after ``#ERROR:``."""

    def __init__(self, reason: str, rate_limited: bool = False, sent: bool = True) -> None:
        super().__init__(reason)
        self.rate_limited = rate_limited
        """The provider kept refusing it for its rate limit (HTTP 429): the run summary says
        so, with the fix."""
        self.sent = sent
        """False when no request was made: the run had stopped sending to that server."""


class SchemaMismatch(RowError):
    """A reply that is not the JSON the schema asks for; ``reason`` fits in a cell."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(Exception):
    """A request to ``promptbatch serve`` is malformed; its text goes back with a 400 (or
    ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Interrupted(Exception):
    """The user stopped a run (Ctrl-C); every answer received is in the output and the cache."""

    def __init__(self, answers: int, missing: int) -> None:
        super().__init__(f"stopped with {answers} answers, {missing} prompts missing")
        self.answers = answers
        """Answers this run received (from the model or the cache), all written."""
        self.missing = missing
        """Prompts of the run still without an answer: a rerun sends only these."""
