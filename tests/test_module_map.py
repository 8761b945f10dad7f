"""The README's module map lists every module of the package, where it lives, and nothing that
is gone: a newcomer reads it first, and a map that drifts sends them to the wrong file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "promptbatch_sheets"


def module_map() -> dict[str, set[str]]:
    """Folder (``""`` for the package itself) -> the ``.py`` names its entry in the map names."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```\npromptbatch_sheets/", 1)[1].split("```", 1)[0]
    entries: dict[str, set[str]] = {}
    folder = ""
    for line in block.splitlines()[1:]:
        head = re.match(r"  (\S+)", line)
        if head:  # a new entry: a top-level module, or a sub-package with its modules
            name = head.group(1)
            folder = name.rstrip("/") if name.endswith("/") else ""
            if not line.startswith("  ") or not name.endswith(("/", ".py")):
                folder = "?"
        elif not line.startswith("   "):
            folder = "?"  # addin/, bench/: outside the package
        names = entries.setdefault(folder, set())
        names.update(re.findall(r"([\w/]*\w+\.py)\b", line))
        if head and not head.group(1).endswith("/"):
            names.add(head.group(1))
    entries.pop("?", None)
    return entries


def test_every_module_is_in_the_readme_map_and_the_map_names_only_modules() -> None:
    listed = module_map()
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        folder, name = parts[0] if len(parts) > 1 else "", "/".join(parts[1:]) or parts[0]
        if parts[-1] == "__init__.py" and folder in listed | {"": set()}:
            continue  # a package's own entry in the map stands for its __init__.py
        assert name in listed.get(folder, set()) or name.split("/")[-1] in listed.get(
            folder, set()), f"{path.relative_to(ROOT)} is not in the README's module map"
    for folder, names in listed.items():
        for name in names:
            candidates = [PACKAGE / folder / name, PACKAGE / folder / "batchapi" / name]
            if folder and "/" not in name:
                candidates += [p for p in (PACKAGE / folder).rglob(name)]
            assert any(p.is_file() for p in candidates), (
                f"the README's module map names {folder + '/' if folder else ''}{name}, "
                "which does not exist")
