"""Readability filters for rejection sampling (R1 section 2.3.3 keeps only readable samples: no runaway
repetition, no mixed languages). Pure Python: no torch.

- `repeated_ngram_fraction`: the share of a text's word n-grams that repeat an earlier one; looping text
  ("the answer is 5 the answer is 5 ...") scores near 1, ordinary prose near 0.
- `foreign_script_fraction`: the share of letters written in a script other than the text's main one
  (Latin, Cyrillic, CJK, ...), from the first word of each letter's Unicode name.
"""

from __future__ import annotations

import unicodedata


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """1 - distinct / total over the text's word n-grams; 0.0 for texts shorter than 2n words."""
    words = text.split()
    if len(words) < 2 * n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def letter_script(char: str) -> str | None:
    """The script of a letter ('LATIN', 'CYRILLIC', 'CJK', 'HIRAGANA', ...); None for non-letters."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else None


def foreign_script_fraction(text: str) -> float:
    """Share of letters that are not in the most common script of the text (0.0 without letters)."""
    counts: dict[str, int] = {}
    for char in text:
        script = letter_script(char)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    total = sum(counts.values())
    return 0.0 if total == 0 else 1.0 - max(counts.values()) / total


def unreadable_reason(text: str, max_repetition: float, max_foreign_script: float) -> str | None:
    """Why a completion is unreadable ('repetition' or 'mixed_scripts'), or None when it reads fine."""
    if repeated_ngram_fraction(text) > max_repetition:
        return "repetition"
    if foreign_script_fraction(text) > max_foreign_script:
        return "mixed_scripts"
    return None


def normalised(text: str) -> str:
    """The form two samples are compared in for deduplication: whitespace collapsed."""
    return " ".join(text.split())
