"""`grpolab score` end to end on fixture files."""

from __future__ import annotations

import json

import pytest

from grpolab.cli import main
from grpolab.tasks import get_task


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def score(capsys, *args):
    code = main(["score", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def test_gsm8k_reference_answers_score_one_and_wrong_answers_zero(tmp_path, capsys):
    rows = [
        {"question": "q1", "answer": "2 * 9 = <<2*9=18>>18\n#### 18", "completion": "2 * 9 = 18\n#### 18"},
        {"question": "q2", "answer": "#### 1,200", "completion": "<think>x</think><answer>1200 dollars</answer>"},
        {"question": "q3", "answer": "#### 5", "completion": "The answer is \\boxed{6}."},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    code, out, _ = score(capsys, "task=gsm8k", f"input={source}", f"output={tmp_path / 'out.jsonl'}")
    assert code == 0
    assert json.loads(out[-1]) | {"seconds": 0} == {"n": 3, "mean_reward": 2 / 3, "errors": 0, "seconds": 0}
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in written] == [1.0, 1.0, 0.0]
    assert written[0]["rewards"] == {"correctness": 1.0} and written[0]["question"] == "q1"
    code, out, _ = score(
        capsys, "task=gsm8k", f"input={source}", f"output={tmp_path / 'w.jsonl'}", "reward.weights.r1_format=0.5"
    )
    assert [json.loads(line)["rewards"]["r1_format"] for line in (tmp_path / "w.jsonl").read_text().splitlines()] == [
        0.0,
        1.0,
        0.0,
    ]


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(tmp_path, capsys):
    problems = get_task("humaneval").problems()
    first, second = problems["HumanEval/0"], problems["HumanEval/2"]
    fenced = f"Sure:\n```python\n{first['prompt']}{first['canonical_solution']}```\n"
    rows = [
        {"task_id": "HumanEval/0", "completion": first["canonical_solution"]},
        {"task_id": "HumanEval/2", "completion": second["canonical_solution"]},
        {"task_id": "HumanEval/0", "completion": fenced},
        {"task_id": "HumanEval/0", "completion": "    return True\n"},
        {"task_id": "HumanEval/2", "completion": "import sys\nsys.exit(0)\n"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    code, out, _ = score(capsys, "task=humaneval", f"input={source}", f"output={tmp_path / 'out.jsonl'}")
    assert code == 0
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in written] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert json.loads(out[-1])["n"] == 5


def test_bad_input_is_one_line_and_nothing_is_overwritten(tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    code, _, err = score(capsys, "task=gsm8k", f"input={tmp_path / 'missing.jsonl'}", f"output={output}")
    assert code == 2 and "no such data file" in err and err.count("\n") == 1
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "q", "answer": "#### 1"}])
    code, _, err = score(capsys, "task=gsm8k", f"input={source}", f"output={output}")
    assert code == 2 and "line 1: missing field(s) completion" in err
    output.write_text("keep me")
    code, _, err = score(capsys, "task=gsm8k", f"input={source}", f"output={output}")
    assert code == 2 and "exists" in err and output.read_text() == "keep me"
    code, _, err = score(
        capsys, "task=gsm8k", f"input={source}", f"output={tmp_path / 'o.jsonl'}", "reward.weights.x=1"
    )
    assert code == 2 and "reward.weights.x" in err


def test_humaneval_problems_whose_tests_use_prompt_helpers_pass_and_wrong_ones_fail(tmp_path, capsys):
    """HumanEval/32, 38 and 50 test through helpers of the prompt (`poly`, `encode_cyclic`, `encode_shift`),
    which the checker defines from the prompt: the canonical solutions pass, wrong ones fail."""
    problems = get_task("humaneval").problems()
    chosen = ["HumanEval/0", "HumanEval/32", "HumanEval/38", "HumanEval/50", "HumanEval/53"]
    rows = [{"task_id": task_id, "completion": problems[task_id]["canonical_solution"]} for task_id in chosen]
    rows += [{"task_id": task_id, "completion": "    return None\n"} for task_id in chosen]
    rows.append({"task_id": "HumanEval/38", "completion": "    return encode_cyclic(s)\n"})
    # a completion that brings its own (identity) encoder: the test still uses the prompt's
    own_encoder = "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n"
    rows.append({"task_id": "HumanEval/38", "completion": own_encoder})
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    code, _, _ = score(capsys, "task=humaneval", f"input={source}", f"output={output}", "reward.num_workers=4")
    assert code == 0
    assert [json.loads(line)["reward"] for line in output.read_text().splitlines()] == [1.0] * 5 + [0.0] * 7


def test_a_humaneval_row_with_a_task_id_that_is_not_a_known_string_is_one_line(tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    for task_id, message in [
        (["HumanEval/0"], 'row 2: task humaneval: task_id must be a string such as "HumanEval/0", got ["HumanEval/0"]'),
        ({"id": 0}, "row 2: task humaneval: task_id must be a string"),
        ("HumanEval/999", "row 2: task humaneval: unknown task_id 'HumanEval/999'"),
    ]:
        rows = [{"task_id": "HumanEval/0", "completion": "x"}, {"task_id": task_id, "completion": "x"}]
        source = write_jsonl(tmp_path / "in.jsonl", rows)
        code, _, err = score(capsys, "task=humaneval", f"input={source}", f"output={output}")
        assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
        assert not output.exists()


@pytest.mark.slow
def test_all_164_humaneval_canonical_solutions_score_one(tmp_path, capsys):
    problems = get_task("humaneval").problems()
    rows = [{"task_id": task_id, "completion": p["canonical_solution"]} for task_id, p in problems.items()]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    code, out, _ = score(capsys, "task=humaneval", f"input={source}", f"output={tmp_path / 'out.jsonl'}")
    assert code == 0
    assert json.loads(out[-1])["n"] == 164 and json.loads(out[-1])["mean_reward"] == 1.0
