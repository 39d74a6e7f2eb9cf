"""The genre evaluation sets: present, large enough, varied, and disjoint from calibration text."""

from pathlib import Path

import pytest

from intsim.errors import GQAError
from intsim.genres import genre_names, genre_sentences
from intsim.sentences import calibration_sentences

SENTENCES_TXT = Path(__file__).resolve().parents[1] / "intsim" / "data" / "sentences.txt"


def test_the_four_genres_exist_with_enough_sentences():
    assert {"technical", "legal", "conversational", "news"} <= set(genre_names())
    for g in genre_names():
        s = genre_sentences(g)
        assert len(s) >= 300, g
        assert len(set(s)) == len(s), f"{g} has repeated lines"
        words = [len(x.split()) for x in s]
        assert min(words) >= 5 and max(words) <= 40, g
        assert max(words) >= 25, f"{g} lacks long sentences"


def test_no_sentence_is_calibration_text_or_in_two_genres():
    calib = set(calibration_sentences()) | set(calibration_sentences(2048))
    calib |= set(SENTENCES_TXT.read_text(encoding="utf-8").splitlines())
    seen = {}
    for g in genre_names():
        for s in genre_sentences(g):
            assert s not in calib, (g, s)
            assert s not in seen, (g, seen.get(s), s)
            seen[s] = g


def _one_word_apart(a: str, b: str) -> bool:
    wa, wb = a.split(), b.split()
    return len(wa) == len(wb) and sum(x != y for x, y in zip(wa, wb)) == 1


def test_technical_set_has_many_near_duplicates():
    s = genre_sentences("technical")
    with_twin = {i for i in range(len(s)) for j in range(len(s)) if i != j and _one_word_apart(s[i], s[j])}
    assert len(with_twin) >= 80  # 95 sentences have a twin one word apart
    # the other genres are not built from templates
    for g in ("legal", "conversational", "news"):
        t = genre_sentences(g)
        twins = sum(_one_word_apart(a, b) for i, a in enumerate(t) for b in t[i + 1:])
        assert twins <= 5, g


def test_first_n_and_bad_input():
    assert genre_sentences("news", 3) == genre_sentences("news")[:3]
    with pytest.raises(GQAError, match="genre.*choose one of"):
        genre_sentences("poetry")
    with pytest.raises(GQAError, match="n:"):
        genre_sentences("news", 0)
