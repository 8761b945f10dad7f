"""The key scrub on every reply (issue 12 item 3), against every mix of key slices: the end to
end tests are in test_trust_replies.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from promptbatch_sheets.providers.redact import Redactor


@given(key=st.text("ab-Z9", min_size=8, max_size=40),
       pieces=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40),
                                 st.text("ab-Z9 .", max_size=12)), max_size=6))
def test_no_run_of_eight_key_characters_survives_the_scrub(
    key: str, pieces: list[tuple[int, int, str]],
) -> None:
    """Whatever mix of key slices and other text a reply holds (a small alphabet makes the
    key repeat itself, the hard case), no 8 characters of the key in a row are left, and text
    that holds no such run is returned as it was."""
    text = "".join(key[a:b] + other for a, b, other in pieces)
    scrubbed = Redactor(key)(text)
    assert not any(key[i:i + 8] in scrubbed.replace("***", "\n") for i in range(len(key) - 7))
    if not any(key[i:i + 8] in text for i in range(len(key) - 7)):
        assert scrubbed == text
