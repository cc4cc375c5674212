import pytest

from grpolab.stages.readability import foreign_script_fraction, repeated_ngram_fraction, unreadable_reason


def test_repeated_ngram_fraction_hand_computed():
    # 8 words "a b c d a b c d": 5 four-grams, of which (a,b,c,d) repeats once -> 1 - 4/5
    assert repeated_ngram_fraction("a b c d a b c d") == pytest.approx(0.2)
    assert repeated_ngram_fraction("one two three four five six seven eight") == 0.0
    assert repeated_ngram_fraction("short text") == 0.0
    looping = "the answer is 5 " * 10  # 40 words, 37 four-grams, 4 distinct
    assert repeated_ngram_fraction(looping) == pytest.approx(1 - 4 / 37)


def test_foreign_script_fraction():
    assert foreign_script_fraction("The sum is 42.") == 0.0
    assert foreign_script_fraction("1 + 2 = 3") == 0.0
    assert foreign_script_fraction("abc где") == pytest.approx(3 / 6)  # 3 Latin, 3 Cyrillic letters
    assert foreign_script_fraction("answer 答案") == pytest.approx(2 / 8)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("The result is 57.", None),
        ("so so so so so so so so so so so so", "repetition"),
        ("The result is 57, 答案是57", "mixed_scripts"),
    ],
)
def test_unreadable_reason(text, reason):
    assert unreadable_reason(text, max_repetition=0.5, max_foreign_script=0.02) == reason
