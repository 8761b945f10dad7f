"""The one exception type a user ever sees: a message that names the place and the fix."""

from __future__ import annotations


class PromptBatchError(Exception):
    """A mistake in the user's input or setup. The CLI prints it without a traceback."""


class TemplateError(PromptBatchError):
    """The prompt template cannot be parsed or rendered."""


class TableError(PromptBatchError):
    """The sheet holds no usable table (header row, data rows, output column)."""


class ConfigError(PromptBatchError):
    """A setting is missing or wrong: model, key, base URL, numbers out of range."""


class WorkbookError(PromptBatchError):
    """A file cannot be read or written safely."""
