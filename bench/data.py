"""The benchmark's input: CSV tables with a distinct prompt on every row."""

from __future__ import annotations

import csv
from pathlib import Path

HEADER = ["id", "name", "city", "topic", "notes"]
TEMPLATE = ("Item {{ id }}: write one line about {{ name }} from {{ city }} on {{ topic }}. "
            "{{ notes }}")
"""Rendered length is ``fixed_prompt_chars() + len(notes)``: every other field has a fixed width."""

_CITIES = ["Lisbon", "Oslo..", "Quito.", "Accra.", "Hanoi.", "Perth.", "Lima..", "Cork.."]
_TOPICS = ["weather", "history", "cuisine", "transit", "markets", "parks..", "museums", "music.."]


def fixed_prompt_chars() -> int:
    """Characters of a rendered prompt apart from its ``notes`` field."""
    return len(render(0, ""))


def render(i: int, notes: str) -> str:
    """The prompt row ``i`` renders to (mirrors TEMPLATE, used only to size it)."""
    name, city, topic = _fields(i)
    return f"Item {i:07d}: write one line about {name} from {city} on {topic}. {notes}"


def _fields(i: int) -> tuple[str, str, str]:
    return f"Person{i % 99991:05d}", _CITIES[i % len(_CITIES)], _TOPICS[(i // 8) % len(_TOPICS)]


def write_csv(path: Path, rows: int, prompt_chars: int = 0) -> Path:
    """A 5-column table of ``rows`` rows; each prompt is ``prompt_chars`` long if given."""
    pad = max(0, prompt_chars - fixed_prompt_chars())
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(HEADER)
        for i in range(rows):
            name, city, topic = _fields(i)
            notes = ("Keep it short. " * (pad // 15 + 1))[:pad] if pad else "Keep it short."
            out.writerow([f"{i:07d}", name, city, topic, notes])
    return path
