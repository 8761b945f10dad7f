"""Build promptbatch_sheets.xlam beside this script from the installed xlwings' ribbon template.

Run it instead of editing the .xlam: ``.venv/bin/python addin/excel/build_xlam.py``. Two runs
with the same xlwings give the same bytes (``promptbatch addin install`` builds the same way).
"""

from __future__ import annotations

from pathlib import Path

from promptbatch_sheets.addin import XLAM_NAME, build_xlam

if __name__ == "__main__":
    print(build_xlam(Path(__file__).resolve().with_name(XLAM_NAME)))
