import itertools

import pytest

from grpolab.errors import TaskError
from grpolab.rewards.math import extract_answer, number_correctness
from grpolab.tasks import get_task


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("47 + 38 = 85", "85"),
        ("The answer is 1,234.", "1234"),
        ("so \\boxed{12} and then 13", "12"),
        ("<answer> 7 </answer> 9", "7"),
        ("blah\n#### -5", "-5"),
        ("no digits", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_number_correctness():
    assert number_correctness("47 + 38 = 85", "85") == 1.0
    assert number_correctness("85.0", "85") == 1.0
    assert number_correctness("84", "85") == 0.0


def test_held_out_is_fixed_and_never_trained_on():
    task = get_task("arithmetic")
    held_out = task.eval_examples(500)
    assert held_out[:10] == get_task("arithmetic").eval_examples(10)
    keys = {(e["a"], e["b"], e["operation"]) for e in held_out}
    stream = task.train_stream(seed=3)
    train = list(itertools.islice(stream, 3000))
    assert not keys & {(e["a"], e["b"], e["operation"]) for e in train}
    assert list(itertools.islice(task.train_stream(seed=3), 5)) == train[:5]
    assert {e["operation"] for e in train} == {"+", "-", "*"}
    for example in train[:200]:
        assert task.is_correct(f"It is {example['answer']}", example)


def test_unknown_task():
    with pytest.raises(TaskError, match="unknown task"):
        get_task("nope")
