"""promptbatch-sheets: one prompt template, one table, one model answer per row.

    from promptbatch_sheets import open_surface, prepare, run, Store
    surface = open_surface("book.xlsx")
    summary = run(prepare(surface), surface, Store())
"""

from .batch import Prepared, prepare, preview, run
from .engine import RowResult, Summary
from .errors import PromptBatchError
from .store import Store
from .surfaces import open_surface

__all__ = ["Prepared", "PromptBatchError", "RowResult", "Store", "Summary", "open_surface",
           "prepare", "preview", "run"]
