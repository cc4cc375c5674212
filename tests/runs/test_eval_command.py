import json
import subprocess
import sys

import pytest

from grpolab.cli import main
from grpolab.engine.base import Completion
from grpolab.stages.evaluate import format_table, score_groups


class EchoTask:
    """The answer of a completion is its text; correct when it equals the example's answer."""

    def extract_answer(self, text):
        return text or None

    def is_correct(self, text, example):
        return text == example["answer"]

    def question(self, example):
        return example["question"]


def completions(*texts):
    return [Completion(token_ids=[], logprobs=[], finish_reason="stop", text=t) for t in texts]


def test_score_groups_hand_computed():
    examples = [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}]
    groups = [completions("1", "3", "3", "1"), completions("", "2", "5", "6")]
    summary, records = score_groups(EchoTask(), examples, groups, k=4)
    # problem a: 2/4 correct, tie 1-vs-3 goes to "1" (sampled first) -> maj correct; pass@4 = 1
    # problem b: 1/4 correct, all answers distinct -> earliest answer "2" wins ("" never votes) -> maj correct
    assert summary["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert summary["maj@k"] == 1.0
    assert summary["pass@k"] == 1.0
    assert len(records) == 8 and records[1] == {
        "index": 0,
        "mode": "sample",
        "sample": 1,
        "question": "a",
        "answer": "1",
        "completion": "3",
        "extracted": "3",
        "correct": False,
        "finish_reason": "stop",
    }


def test_format_table_lists_every_metric():
    table = format_table([{"label": "base", "n": 4, "k": 1, "accuracy": 0.25}], label="label")
    assert table.splitlines()[0].split() == ["label", "n", "k", "accuracy"]
    assert table.splitlines()[2].split() == ["base", "4", "1", "0.250"]


def test_eval_command_writes_summary_and_every_sample(tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "model=tiny-random", "task=arithmetic", "n=3", "k=2", "max_new_tokens=4"]
    result = subprocess.run(
        [sys.executable, "-m", "grpolab", *argv, f"output_dir={out}"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "maj@2" in result.stdout
    summary = json.loads((out / "eval.json").read_text())
    assert summary["n"] == 3 and summary["k"] == 2
    for key in ("accuracy", "pass@1", "maj@k", "pass@k"):
        assert 0.0 <= summary[key] <= 1.0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 3 + 3 * 2
    assert {r["mode"] for r in records} == {"greedy", "sample"}
    assert all({"completion", "extracted", "correct"} <= set(r) for r in records)
    # a second run into the same folder is refused and leaves it as it was
    before = (out / "eval.json").read_text()
    assert main([*argv, f"output_dir={out}"]) == 2
    assert (out / "eval.json").read_text() == before


def test_eval_greedy_only_when_k_is_1(tmp_path):
    assert main(["eval", "model=tiny-random", "n=2", "max_new_tokens=3", f"output_dir={tmp_path}/e"]) == 0
    summary = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert "accuracy" in summary and "pass@1" not in summary


@pytest.mark.parametrize(
    "override, message",
    [("k=0", "k: got 0"), ("temperature=0", "temperature: got 0.0"), ("engine=vllm", "engine: got 'vllm'")],
)
def test_eval_rejects_bad_settings(tmp_path, capsys, override, message):
    assert main(["eval", "model=tiny-random", override, f"output_dir={tmp_path}/e"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_eval_unknown_task_is_one_line(tmp_path, capsys):
    assert main(["eval", "model=tiny-random", "task=nope", f"output_dir={tmp_path}/e"]) == 2
    assert "task: unknown task 'nope'" in capsys.readouterr().err
