"""On-policy distillation (`grpolab distill method=on_policy`, `grpolab train algorithm=on_policy_distill`): the
student samples, the teacher scores the student's tokens, the per-token advantage is -(log p_student - log
p_teacher); end to end on tiny-random, and the refusals in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from grpolab.cli import main
from grpolab.model.loading import ensure_tiny_random, load_tokenizer

SMALL = ["rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "eval.n=4",
         "eval.max_new_tokens=8", "train.max_minutes=0", "log.report=false"]  # fmt: skip


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_distill_on_policy_trains_a_pruned_student(tmp_path):
    out = tmp_path / "d"
    argv = ["distill", "method=on_policy", "teacher=tiny-random", "student.model=prune:tiny-random:keep=0"]
    argv += [f"output_dir={out}", "on_policy.train.max_steps=2", *(f"on_policy.{key}" for key in SMALL), "--quiet"]
    assert main(argv) == 0
    records = metrics(out)
    # the k1 estimate of one batch can have either sign; a student with half the layers is not the teacher
    assert len(records) == 2 and all(record["distill/reverse_kl"] != 0 for record in records)
    assert json.loads((out / "final" / "config.json").read_text())["num_hidden_layers"] == 1
    assert (out / "eval.json").exists()


def test_a_teacher_equal_to_the_student_gives_zero_advantage_and_no_update(tmp_path):
    out = tmp_path / "t"
    argv = ["train", "model=tiny-random", "teacher=tiny-random", "algorithm=on_policy_distill", "grpo.beta=0",
            "train.max_steps=2", *SMALL, f"output_dir={out}", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert [record["distill/reverse_kl"] for record in metrics(out)] == [0.0, 0.0]
    before, after = load_file(f"{ensure_tiny_random()}/model.safetensors"), load_file(f"{out}/final/model.safetensors")
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_teacher_with_another_tokenizer_is_refused_before_the_run_folder(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    source = ensure_tiny_random()
    tokenizer = load_tokenizer(str(source))
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(teacher)
    for name in ("config.json", "model.safetensors"):
        (teacher / name).write_bytes((source / name).read_bytes())
    out = tmp_path / "d"
    argv = ["distill", "method=on_policy", f"teacher={teacher}", "student.model=tiny-random", f"output_dir={out}"]
    assert main(argv) == 2
    assert "teacher: has another tokenizer than the model" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "teacher=tiny-random"], "teacher: is only used with algorithm=on_policy_distill"),
        (["train", "algorithm=on_policy_distill", "grpo.beta=0"], "teacher: algorithm=on_policy_distill needs"),
        (["train", "algorithm=on_policy_distill", "teacher=tiny-random"], "grpo.beta: has no meaning with"),
        (["distill", "method=on_policy", "student.model="], "student.model: method=on_policy needs an existing"),
        (["distill", "method=on_policy", "on_policy.model=x"], "on_policy.model: is set by distill's own key"),
        (["distill", "on_policy.train.max_steps=3"], "on_policy: its keys are for method=on_policy only"),
    ],
)
def test_refusals_in_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, f"output_dir={tmp_path}/r"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
