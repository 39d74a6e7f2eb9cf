"""Held-out evaluation text by genre: sentences unlike the calibration text, one set per genre.

Each genre is a file ``intsim/data/genres/<genre>.txt`` holding one sentence per line (original
text written for this project, under the project's licence; nothing downloaded). The sets are
for *evaluation* only: none of their sentences is among the calibration text
(:func:`intsim.sentences.calibration_sentences` and ``intsim/data/sentences.txt``), which
tests/test_attribution.py checks, so a result measured on a genre is a result on unseen text.

- ``technical``: API and device documentation with many near-duplicates (the same sentence with
  one parameter, number or version changed), the case where retrieval lives on near-ties;
- ``legal``: contract clauses, statutes and judgments (long, formal, nested sentences);
- ``conversational``: everyday speech (short turns, contractions, questions);
- ``news``: news-agency style reports (numbers, places, institutions).

The genre names are the file names, so adding a file adds a genre everywhere the names are
offered (the CLI's choices, the per-genre benchmark).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .errors import GQAError

GENRE_DIR = Path(__file__).resolve().parent / "data" / "genres"


def genre_names() -> tuple[str, ...]:
    """The available genres, sorted (one per ``data/genres/*.txt`` file)."""
    return tuple(sorted(p.stem for p in GENRE_DIR.glob("*.txt")))


@lru_cache(maxsize=None)
def _read(name: str) -> tuple[str, ...]:
    lines = (GENRE_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return tuple(s.strip() for s in lines if s.strip())


def genre_sentences(name: str, n: int | None = None) -> list[str]:
    """The sentences of genre ``name`` in file order (the first ``n`` if given)."""
    names = genre_names()
    if name not in names:
        raise GQAError("genre", f"unknown genre {name!r}", f"choose one of {', '.join(names)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise GQAError("n", f"must be a positive integer, got {n!r}", "give the number of sentences wanted")
    out = list(_read(name))
    return out if n is None else out[:n]
