"""Deterministic, varied English sentences for calibration and accuracy measurement (no downloads).

Sentences are composed from several domains (science, sport, cooking, finance, travel, health,
technology, nature, music, law) in several syntactic shapes, so the set has real semantic
neighbourhoods (same domain, shared entities) without being near-duplicates. ``sample_sentences``
with different seeds gives disjoint calibration and evaluation sets.
"""

from __future__ import annotations

import random

DOMAINS = {
    "science": (["the physicist", "a chemistry student", "the research team", "an astronomer", "the biologist"],
                ["measured", "discovered", "published", "modelled", "observed"],
                ["the decay rate of a rare isotope", "a new protein structure", "faint signals from a distant galaxy",
                 "the mutation in the bacteria", "the temperature of the plasma"],
                ["in the laboratory", "at the observatory", "during the experiment", "in the field station"]),
    "sport": (["the goalkeeper", "our captain", "the young sprinter", "the tennis champion", "the coach"],
              ["won", "lost", "defended", "trained for", "celebrated"],
              ["the championship final", "a penalty in extra time", "the hundred metre record", "the second set",
               "the away match"],
              ["in front of a full stadium", "last weekend", "despite the rain", "after a long injury"]),
    "cooking": (["the chef", "my grandmother", "the baker", "a food critic", "the cook"],
                ["roasted", "baked", "seasoned", "tasted", "simmered"],
                ["the garlic and tomatoes", "a loaf of sourdough bread", "the lentil soup", "fresh salmon with lemon",
                 "a chocolate cake"],
                ["for two hours", "in a cast iron pan", "before dinner", "at the village fair"]),
    "finance": (["the central bank", "investors", "the accountant", "a hedge fund", "the treasurer"],
                ["raised", "cut", "audited", "sold", "forecast"],
                ["interest rates", "the quarterly earnings", "government bonds", "the company's debt",
                 "the annual budget"],
                ["after the inflation report", "on Monday morning", "despite market turmoil", "for the next year"]),
    "travel": (["the tourists", "a backpacker", "the pilot", "our guide", "the family"],
               ["visited", "missed", "booked", "explored", "photographed"],
               ["the old harbour", "a night train to Vienna", "the mountain pass", "the cathedral square",
                "a cheap flight to Lisbon"],
               ["during the holidays", "at sunrise", "without a map", "in the pouring rain"]),
    "health": (["the doctor", "a nurse", "the patient", "the surgeon", "the pharmacist"],
               ["prescribed", "examined", "recommended", "treated", "monitored"],
               ["the fever", "a broken wrist", "a daily dose of vitamins", "high blood pressure", "the allergy"],
               ["at the clinic", "overnight", "in the emergency room", "after the operation"]),
    "technology": (["the engineer", "a startup", "the programmer", "the security team", "our laptop"],
                   ["debugged", "released", "encrypted", "compiled", "crashed while running"],
                   ["the database server", "a new smartphone app", "the neural network", "the firmware update",
                    "the password manager"],
                   ["late at night", "before the deadline", "in the cloud", "on the old hardware"]),
    "nature": (["the wolves", "a heron", "the old oak", "the bees", "the river"],
               ["crossed", "flooded", "pollinated", "hunted", "sheltered"],
               ["the frozen valley", "the wildflower meadow", "the fish in the shallows", "the village fields",
                "the nesting birds"],
               ["in early spring", "after the storm", "at dusk", "every autumn"]),
    "music": (["the orchestra", "a jazz pianist", "the choir", "the drummer", "the composer"],
              ["performed", "rehearsed", "recorded", "improvised", "wrote"],
              ["a symphony by Brahms", "the new album", "an old folk song", "a slow blues", "the opera overture"],
              ["in the concert hall", "for the radio", "at the festival", "in a tiny studio"]),
    "law": (["the judge", "the defence lawyer", "a witness", "the jury", "the prosecutor"],
            ["questioned", "dismissed", "appealed", "reviewed", "signed"],
            ["the contract", "the verdict", "a new piece of evidence", "the tenant's complaint", "the patent claim"],
            ["in court", "behind closed doors", "on Friday", "after a long hearing"]),
}

SHAPES = (
    "{S} {V} {O} {P}.",
    "{P_cap}, {S} {V} {O}.",
    "Yesterday {S} {V} {O}.",
    "Did {S} really say that they {V} {O}?",
    "I heard that {S} {V} {O} {P}, which surprised everyone.",
    "{O_cap} was something {S} {V} {P}.",
    "Nobody expected that {S} {V} {O}.",
    "Because of the news, {S} {V} {O} {P}.",
)


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def sample_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences, the same for the same seed."""
    rng = random.Random(seed)
    names = sorted(DOMAINS)
    out, seen = [], set()
    while len(out) < n:
        subj, verb, obj, place = DOMAINS[names[len(out) % len(names)]]
        s, v, o, p = rng.choice(subj), rng.choice(verb), rng.choice(obj), rng.choice(place)
        text = rng.choice(SHAPES).format(S=s, V=v, O=o, P=p, P_cap=_cap(p), O_cap=_cap(o))
        text = _cap(text)
        if text not in seen:
            seen.add(text)
            out.append(text)
        if len(seen) > 50 * n + 1000:
            raise RuntimeError("sentence space exhausted")
    return out


def calibration_sentences(n: int = 256) -> list[str]:
    return sample_sentences(n, seed=1234)


def evaluation_sentences(n: int = 256) -> list[str]:
    """Disjoint from :func:`calibration_sentences` (different seed; overlaps removed)."""
    calib = set(calibration_sentences())
    out = [s for s in sample_sentences(n + len(calib), seed=98765) if s not in calib]
    return out[:n]
