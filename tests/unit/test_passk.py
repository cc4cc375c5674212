import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpolab.algorithms.passk import majority_correct, majority_index, pass_at_1, pass_at_k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 1, 0.3),  # pass@1 is c/n
        (10, 1, 5, 0.5),  # 1 - C(9,5)/C(10,5) = 1 - 126/252
        (4, 0, 2, 0.0),  # nothing correct
        (4, 3, 2, 1.0),  # n - c = 1 < k: every pair holds a correct sample
        (4, 4, 4, 1.0),
        (6, 1, 6, 1.0),  # k = n with one correct
        (8, 2, 3, 1 - 20 / 56),  # 1 - C(6,3)/C(8,3)
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_binomials(case):
    n, c, k = case
    expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("n, c, k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_1_is_mean_correctness():
    assert pass_at_1([True, False, False, True]) == 0.5
    with pytest.raises(ValueError):
        pass_at_1([])


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["3", "4", "4"], 1),  # plain majority
        (["4", "3", "3", "4"], 0),  # 2-2 tie: "4" was sampled first
        (["3", "4", "3", "4"], 0),  # 2-2 tie: "3" was sampled first
        ([None, "5", None, None], 1),  # unanswered samples never vote
        (["1", "2", "3"], 0),  # all distinct: the earliest
        ([None, None], None),
        (["7", None, "8", "8", "7", "9"], 0),  # 2-2 tie between 7 and 8: 7 first
    ],
)
def test_majority_index(answers, expected):
    assert majority_index(answers) == expected


@pytest.mark.parametrize(
    "answers, correct, expected",
    [
        (["12", "13", "13"], [True, False, False], False),  # majority 13 is wrong
        (["13", "12", "12"], [False, True, True], True),
        (["12", "13"], [True, False], True),  # tie: earliest (12) is right
        (["13", "12"], [False, True], False),  # tie: earliest (13) is wrong
        ([None, None, "12"], [False, False, True], True),
        ([None, None], [False, False], False),
    ],
)
def test_majority_correct(answers, correct, expected):
    assert majority_correct(answers, correct) is expected
