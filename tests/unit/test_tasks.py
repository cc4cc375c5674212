"""Tasks: data files and their errors, splits, prompts and answer checking, on tiny fixture files."""

from __future__ import annotations

import json
from itertools import islice

import pytest

from grpolab.config import RewardConfig
from grpolab.errors import TaskError
from grpolab.tasks import get_task
from grpolab.tasks.countdown import countdown_reward, evaluate, make_problem


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GSM8K_ROWS = [
    {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i:,}"}
    for i in range(995, 1015)
]


def test_gsm8k_from_a_file_scores_its_own_reference_answers_and_splits_every_tenth_row(tmp_path):
    task = get_task(f"gsm8k:{write_jsonl(tmp_path / 'g.jsonl', GSM8K_ROWS)}")
    held_out = task.eval_examples(2)
    assert held_out == [GSM8K_ROWS[0], GSM8K_ROWS[10]]
    train = list(islice(task.train_stream(seed=1), 36))
    assert all(row not in held_out for row in train) and len({r["question"] for r in train}) == 18
    functions = task.reward_functions()
    for row in GSM8K_ROWS:
        assert functions["correctness"](row["answer"], row) == 1.0
        assert task.is_correct(f"<think>adding</think><answer>{int(task.reference(row)) + 1}</answer>", row) is False
    assert task.reference(GSM8K_ROWS[10]) == "2010"
    with pytest.raises(TaskError, match="eval.n: task gsm8k has 2 held-out examples, got 3"):
        task.eval_examples(3)


def test_a_data_folder_uses_its_train_and_test_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS[:5])
    write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS[5:7])
    task = get_task(f"gsm8k:{tmp_path}")
    assert task.eval_examples(2) == GSM8K_ROWS[5:7]
    assert {r["question"] for r in islice(task.train_stream(0), 10)} == {r["question"] for r in GSM8K_ROWS[:5]}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such data file"),
        ("", "no rows"),
        ('{"question": "q", "answer": "#### 1"}\nnot json\n', "line 2: not valid JSON"),
        ('{"question": "q", "answer": "#### 1"}\n[1, 2]\n', "line 2: expected a JSON object"),
        ('{"question": "q", "answer": "#### 1"}\n\n{"question": "q"}\n', "line 3: missing field\\(s\\) answer"),
    ],
)
def test_data_file_errors_are_one_line_task_errors(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TaskError, match=message) as error:
        get_task(f"gsm8k:{path}").eval_examples(1)
    assert "\n" not in str(error.value)


def test_a_binary_file_is_not_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(TaskError, match="not a UTF-8 JSONL file"):
        get_task(f"gsm8k:{path}").eval_examples(1)


def test_unknown_task_and_bad_jsonl_options():
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(TaskError, match="needs a path"):
        get_task("jsonl:")
    with pytest.raises(TaskError, match="not question=FIELD or answer=FIELD"):
        get_task("jsonl:x.jsonl,prompt=q")


def test_math_and_jsonl_tasks_use_their_field_names(tmp_path):
    math_file = write_jsonl(tmp_path / "m.jsonl", [{"problem": "Half of 1?", "answer": "\\frac12"}])
    math_task = get_task(f"math:{math_file}")
    row = math_task.eval_examples(1)[0]
    assert "Half of 1?" in math_task.question(row)
    assert math_task.reward_functions()["correctness"]("\\boxed{0.5}", row) == 1.0
    rows = [{"prompt": "Capital of France?", "target": "Paris"}, {"prompt": "2+2?", "target": "4"}]
    task = get_task(f"jsonl:{write_jsonl(tmp_path / 'j.jsonl', rows)},question=prompt,answer=target")
    assert task.question(rows[0]) == "Capital of France?"
    assert task.is_correct("<answer> paris </answer>", rows[0])
    assert task.is_correct("The answer is 4", rows[1])
    assert not task.is_correct("The answer is 5", rows[1])


def test_countdown_reward_is_tinyzeros():
    assert countdown_reward("<answer>(1 + 2) * 3</answer>", [1, 2, 3], 9) == 1.0
    assert countdown_reward("<answer>(1 + 2) * 3 = 9</answer>", [3, 2, 1], 9) == 1.0
    assert countdown_reward("<answer>1 + 2 + 3</answer>", [1, 2, 3], 9) == 0.1  # wrong value
    assert countdown_reward("<answer>(1 + 2) * 3 * 3</answer>", [1, 2, 3], 9) == 0.1  # a number used twice
    assert countdown_reward("<answer>__import__('os')</answer>", [1, 2, 3], 9) == 0.1
    assert countdown_reward("(1 + 2) * 3", [1, 2, 3], 9) == 0.0
    assert evaluate("6 / (1 - 3 / 4)") == 24
    with pytest.raises(ValueError):
        evaluate("2 ** 3")


def test_countdown_generated_problems_are_solvable_and_held_out_is_never_trained_on():
    import random

    rng = random.Random(0)
    for _ in range(50):
        problem = make_problem(rng)
        assert 1 <= problem["target"] <= 100 and len(problem["nums"]) in (3, 4)
    task = get_task("countdown")
    held_out = {(tuple(sorted(p["nums"])), p["target"]) for p in task.eval_examples(500)}
    assert all((tuple(sorted(p["nums"])), p["target"]) not in held_out for p in islice(task.train_stream(3), 300))


def test_humaneval_rows_are_completed_by_task_id_and_optional_rewards_are_offered():
    task = get_task("humaneval", RewardConfig(language="en"))
    row = task.prepare_row({"task_id": "HumanEval/0", "completion": "x"})
    assert row["entry_point"] == "has_close_elements" and row["completion"] == "x"
    with pytest.raises(TaskError, match="unknown task_id"):
        task.prepare_row({"task_id": "HumanEval/999"})
    assert len(task.eval_examples(17)) == 17
    names = set(task.reward_functions())
    assert {"tests", "r1_format", "r1_format_partial", "language", "overlong", "length_penalty"} <= names
    assert task.default_weights() == {"tests": 1.0}
