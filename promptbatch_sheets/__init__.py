"""promptbatch-sheets: one prompt template, one table, one model answer per row.

    from promptbatch_sheets import open_surface, prepare, run, Store
    surface = open_surface("book.xlsx")
    summary = run(prepare(surface), surface, Store())

Imports point one way, so each layer can be read and tested without the ones above it::

    cli, server/, surfaces/, udfs, addin      the ways in: a command, HTTP routes, a sheet
      -> runner, formula, batchapi             read, plan, preview or run; flush answers
        -> engine                              dedupe, cache, the worker pool, schema repair
          -> plan, chain, template, table      the one path from rows to prompts (pure)
          -> providers/, limits, store/        the wire, the window and pace, the cache

Errors come in three families (errors.py draws them): mistakes a user can fix (one line,
exit 2), row errors that land as ``#ERROR:`` cells, and a ``serve`` request's errors.
"""

from .engine import RowResult, Summary
from .errors import PromptBatchError
from .runner import Prepared, prepare, preview, run
from .store import Store
from .surfaces import open_surface

__all__ = ["Prepared", "PromptBatchError", "RowResult", "Store", "Summary", "main",
           "open_surface", "prepare", "preview", "run"]


def main() -> None:
    """The Excel ribbon's "Run batch" (xlwings RunPython): run the calling workbook's sheet."""
    import xlwings as xw  # only Excel users install it; `import promptbatch_sheets` stays light

    from .surfaces.excel import run_from_ribbon

    run_from_ribbon(xw.Book.caller())
