"""Evaluation metrics over sampled answers (ALGORITHMS.md section 8). Pure Python: no torch.

- pass@1: the mean correctness of k samples (R1 samples them at T = 0.6, top-p 0.95).
- maj@k (cons@k): whether the most frequent extracted answer among k samples is correct; a tie goes to
  the answer sampled earliest, so the result does not depend on dictionary order.
- unbiased pass@k (Codex paper): from n samples with c correct, 1 - C(n-c, k) / C(n, k), computed as the
  product 1 - prod_{j=n-c+1..n} (1 - k/j), which never forms the huge binomials.
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every draw of k must contain a correct sample
        return 1.0
    product = 1.0
    for j in range(n - c + 1, n + 1):
        product *= 1.0 - k / j
    return 1.0 - product


def pass_at_1(correct: Sequence[bool]) -> float:
    """Mean correctness of one problem's samples."""
    if not correct:
        raise ValueError("pass_at_1: no samples")
    return sum(bool(c) for c in correct) / len(correct)


def majority_index(answers: Sequence[str | None]) -> int | None:
    """Index of the first sample whose answer is the most frequent one; None answers never vote.

    Ties between answers go to the answer that appeared first, and the returned index is that answer's
    first occurrence. None when no sample has an answer.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first.setdefault(answer, index)
    if not counts:
        return None
    # max over answers in first-seen order keeps the earliest among equal counts
    best = max(first, key=lambda answer: (counts[answer], -first[answer]))
    return first[best]


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """maj@k for one problem: the majority answer's sample is correct (False when nothing was answered).

    `correct[i]` is the task's verdict on sample i; samples with equal extracted answers share a verdict,
    so judging the first one judges the answer.
    """
    if len(answers) != len(correct):
        raise ValueError("majority_correct: answers and correct differ in length")
    index = majority_index(answers)
    return index is not None and bool(correct[index])


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
