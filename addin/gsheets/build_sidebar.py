"""Write Sidebar.html beside this script: the panel of ``promptbatch app`` (panel.css, api.js,
panel.js from promptbatch_sheets/web/) with its Google Sheets host (host-gas.js), inlined into
one file, as HtmlService.createHtmlOutputFromFile serves a project file and nothing else.

Run it after changing the panel, never edit Sidebar.html: ``python3 addin/gsheets/build_sidebar.py``
(the standard library only). tests/test_sidebar.py checks the file is up to date, so a user copies
a Sidebar.html that matches the page.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
WEB = HERE.parent.parent / "promptbatch_sheets" / "web"
SCRIPTS = ("api.js", "panel.js", "host-gas.js")
OUT = HERE / "Sidebar.html"


def sidebar_html(web: Path = WEB) -> str:
    """The sidebar's one HTML file, its styles and scripts inlined in the page's order."""
    def part(name: str) -> str:
        text = (web / name).read_text(encoding="utf-8")
        if "</script" in text.lower() or "</style" in text.lower():
            raise ValueError(f"{name} closes its own tag: it cannot be inlined")
        return text.rstrip("\n")

    scripts = "".join(f"<script>\n{part(name)}\n</script>\n" for name in SCRIPTS)
    return ("<!doctype html>\n<!-- Written by addin/gsheets/build_sidebar.py from"
            " promptbatch_sheets/web/: do not edit. -->\n"
            "<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<base target=\"_top\">\n<style>\n" + part("panel.css") + "\n"
            ".pb-panel { padding: 4px 10px; }\n</style>\n</head>\n<body>\n"
            "<main id=\"panel\" class=\"pb-panel\">Loading...</main>\n" + scripts +
            "</body>\n</html>\n")


if __name__ == "__main__":
    OUT.write_text(sidebar_html(), encoding="utf-8")
    print(OUT)
