"""Language consistency (DeepSeek-R1): the share of the chain of thought's words written in the target
language's script. Pure Python: no torch.

R1 counts target-language words over all words in the CoT. Telling English from French needs a language
model; telling English from Chinese needs only the script, which is the mixing R1 saw, so a word is
"in the target language" when every letter of it is in the target language's script (Unicode names).
Digits, punctuation and LaTeX commands are not words. Each CJK character counts as one word, since
Chinese and Japanese do not put spaces between words.
"""

from __future__ import annotations

import re
import unicodedata

SCRIPTS = {
    "en": ("LATIN",),
    "fr": ("LATIN",),
    "de": ("LATIN",),
    "es": ("LATIN",),
    "it": ("LATIN",),
    "pt": ("LATIN",),
    "zh": ("CJK",),
    "ja": ("CJK", "HIRAGANA", "KATAKANA"),
    "ko": ("HANGUL",),
    "ru": ("CYRILLIC",),
    "uk": ("CYRILLIC",),
    "ar": ("ARABIC",),
    "el": ("GREEK",),
    "hi": ("DEVANAGARI",),
}
SPACELESS = ("CJK", "HIRAGANA", "KATAKANA")
LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
LETTER_RUN = re.compile(r"[^\W\d_]+")


def script_of(character: str) -> str:
    name = unicodedata.name(character, "")
    return name.split(" ", 1)[0] if name else ""


def words(text: str) -> list[str]:
    """Runs of letters, with every CJK/kana character a word of its own."""
    result = []
    for run in LETTER_RUN.findall(LATEX_COMMAND.sub(" ", text)):
        current = ""
        for character in run:
            if script_of(character) in SPACELESS:
                if current:
                    result.append(current)
                result.append(character)
                current = ""
            else:
                current += character
        if current:
            result.append(current)
    return result


def chain_of_thought(completion: str) -> str:
    """The text inside `<think>...</think>` when present, else the whole completion."""
    match = re.search(r"<think>(.*?)(?:</think>|$)", completion, flags=re.DOTALL)
    return match.group(1) if match else completion


def language_consistency(completion: str, language: str = "en") -> float | None:
    """Share of CoT words in the target language's script; None when the CoT has no words."""
    if language not in SCRIPTS:
        raise ValueError(f"language consistency: unknown language {language!r} (known: {', '.join(SCRIPTS)})")
    scripts = SCRIPTS[language]
    found = words(chain_of_thought(completion))
    if not found:
        return None
    inside = sum(all(script_of(c) in scripts for c in word) for word in found)
    return inside / len(found)
