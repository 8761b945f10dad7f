"""The answer cache: content-addressed, and safe when several tools open it at once."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from promptbatch_sheets.providers import Completion, Params
from promptbatch_sheets.store import Store, answer_key


def test_many_openers_of_a_new_cache_do_not_collide(tmp_path: Path) -> None:
    for attempt in range(10):
        path = tmp_path / f"cache{attempt}.sqlite3"
        errors: list[BaseException] = []

        def open_close(path: Path = path, errors: list[BaseException] = errors) -> None:
            try:
                Store(path).close()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=open_close) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


texts = st.text(alphabet=st.characters(codec="utf-8"))


@given(label=texts, prompt=texts, system=st.none() | texts, schema=st.none() | texts,
       temperature=st.none() | st.floats(0, 2), max_tokens=st.none() | st.integers(1, 10**6))
def test_keys_of_existing_caches_still_match(label: str, prompt: str, system: str | None,
                                             schema: str | None, temperature: float | None,
                                             max_tokens: int | None) -> None:
    """The key is the SHA-256 of this JSON: answers already stored must stay reachable."""
    material = json.dumps(
        {"model": label, "temperature": temperature, "max_tokens": max_tokens,
         "system": system, "prompt": prompt, **({"schema": schema} if schema else {})},
        sort_keys=True, ensure_ascii=False)
    params = Params(temperature, max_tokens, system, schema)
    assert answer_key(label, params, prompt) == hashlib.sha256(material.encode()).hexdigest()


def test_key_depends_on_model_parameters_and_prompt(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    base = answer_key("openai:m", Params(0.0, 10, None), "hi")
    assert base == answer_key("openai:m", Params(0.0, 10, None), "hi")
    others = {answer_key("openai:n", Params(0.0, 10, None), "hi"),
              answer_key("openai:m", Params(0.5, 10, None), "hi"),
              answer_key("openai:m", Params(0.0, 11, None), "hi"),
              answer_key("openai:m", Params(0.0, 10, "sys"), "hi"),
              answer_key("openai:m", Params(0.0, 10, None), "hi ")}
    assert base not in others and len(others) == 5
    store.put(base, "openai:m", Completion("answer", 3, 4, "stop"))
    assert store.get_many([base, "missing"]) == {base: Completion("answer", 3, 4, "stop")}
    store.close()
    assert Store(tmp_path / "c.sqlite3").get_many([base])[base].text == "answer"
