"""promptbatch-sheets: one prompt template, one table, one model answer per row.

    from promptbatch_sheets import open_surface, prepare, run, Store
    surface = open_surface("book.xlsx")
    summary = run(prepare(surface), surface, Store())
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
