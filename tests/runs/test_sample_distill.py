import json

import pytest

from grpolab.cli import main
from grpolab.stages.distill import DistillConfig, build_student
from grpolab.stages.sample import RejectionConfig, select


def sample(completion, reward=1.0, finish_reason="stop"):
    return {"completion": completion, "reward": reward, "finish_reason": finish_reason}


def test_select_applies_every_filter_in_order():
    group = [
        sample("The answer is 7.", reward=0.0),  # below threshold
        sample("7", finish_reason="length"),  # cut at the token limit
        sample("7 7 7 7 7 7 7 7 7 7"),  # runaway repetition
        sample("答案 is 7"),  # mixed scripts
        sample("It is 7."),  # kept
        sample("It  is 7. "),  # duplicate after whitespace normalisation
        sample("7"),  # kept
        sample("Seven: 7"),  # over the cap of 2
    ]
    select(group, RejectionConfig(threshold=1.0, max_per_prompt=2))
    assert [s["reason"] for s in group] == [
        "reward",
        "truncated",
        "repetition",
        "mixed_scripts",
        None,
        "duplicate",
        None,
        "cap",
    ]
    assert [s["kept"] for s in group] == [False] * 4 + [True, False, True, False]


def test_select_can_keep_truncated_samples():
    group = [sample("7", finish_reason="length")]
    select(group, RejectionConfig(keep_truncated=True))
    assert group[0]["kept"]


def test_sample_command_writes_sft_ready_data(tmp_path):
    out = tmp_path / "s"
    argv = ["sample", "model=tiny-random", f"output_dir={out}", "rejection.prompts=3", "rejection.k=3"]
    argv += ["rejection.max_new_tokens=4", "rejection.threshold=0", "rejection.keep_truncated=true"]
    assert main([*argv, "rejection.max_per_prompt=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 3 and summary["samples"] == 9
    data = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(data) == summary["kept"] <= 6
    assert all(d["messages"][-1]["role"] == "assistant" and d["messages"][-2]["role"] == "user" for d in data)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sum(r["kept"] for r in records) == len(data)
    # a threshold above every reward keeps nothing, and says why
    assert main([*argv, f"output_dir={tmp_path}/s2", "rejection.threshold=2"]) == 0
    assert json.loads((tmp_path / "s2" / "summary.json").read_text())["dropped"] == {"reward": 9}


def test_fresh_student_shares_the_teachers_vocabulary():
    from grpolab.model.loading import ensure_tiny_random, load_model, load_tokenizer

    path = str(ensure_tiny_random())
    teacher, tokenizer = load_model(path), load_tokenizer(path)
    student = build_student(DistillConfig().student, teacher, tokenizer, seed=0)
    assert student.config.vocab_size == teacher.config.vocab_size
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 64


@pytest.mark.parametrize("method", ["sequence", "token"])
def test_distill_command_trains_a_student(tmp_path, method):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"What is {i} + 1?", "completion": str(i + 1)}) + "\n" for i in range(6))
    )
    out = tmp_path / method
    argv = ["distill", "teacher=tiny-random", f"data={data}", f"method={method}", f"output_dir={out}"]
    argv += ["train.max_steps=8", "train.batch_size=1", "student.model=", "student.hidden_size=32", "top_k=5"]
    assert main([*argv, "--quiet"]) == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert (out / "final" / "model.safetensors").exists()


def test_distill_samples_the_teacher_when_no_data_is_given(tmp_path):
    out = tmp_path / "d"
    argv = ["distill", "teacher=tiny-random", f"output_dir={out}", "rejection.prompts=2", "rejection.k=2"]
    argv += ["rejection.max_new_tokens=4", "rejection.threshold=0", "rejection.keep_truncated=true"]
    argv += ["train.max_steps=1", "student.model="]
    assert main([*argv, "--quiet"]) == 0
    assert (out / "teacher_samples" / "data.jsonl").read_text().count("\n") == 4
    assert (out / "final" / "config.json").exists()


def test_distill_rejects_bad_student_shapes(tmp_path, capsys):
    assert main(["distill", "teacher=tiny-random", "student.num_heads=3", f"output_dir={tmp_path}/d"]) == 2
    assert "hidden_size must be divisible by num_heads" in capsys.readouterr().err
