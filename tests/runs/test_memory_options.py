"""The memory levers end to end through the command line (issue 24): 8-bit Adam moments, the update inside the
backward pass, per-layer activation checkpointing and the engine on the trainer's own weights. Each one trains;
checkpointing and the in-backward update change no result; a kill -9 resumes bitwise with all of them on; what
they cannot combine with is refused in one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from grpolab.config import load_config
from grpolab.errors import ConfigError
from tests.conftest import TINY, kill_at_checkpoint, run_cli

ONE_PASS = ["train.max_grad_norm=0", "train.micro_batch_size=8"]  # 2 prompts x 4: the whole rollout in one pass
LEVERS = [*ONE_PASS, "train.optimizer=adamw_8bit", "train.optimizer_in_backward=true",
          "train.activation_checkpointing=true"]  # fmt: skip
TIMING = ("step_seconds", "tokens_per_second")


def comparable(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in TIMING and not k.startswith("time/")} for m in lines]


def final_weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def train(tmp_path, name, *overrides):
    run_dir = tmp_path / name
    run_cli("train", *TINY, *ONE_PASS, *overrides, "log.report=false", f"output_dir={run_dir}", check=True)
    return run_dir


def test_activation_checkpointing_changes_nothing(tmp_path):
    """In fp32 the recompute gives the same values, bit for bit. (Under bf16 autocast a checkpointed layer casts
    its weight once per pass instead of once per forward, so a weight's two gradients from the prompt and the
    completion pass are summed in fp32 instead of bf16: the gradients differ in rounding only.)"""
    fp32 = "train.precision=fp32"
    plain, checkpointed = (
        train(tmp_path, "plain", fp32),
        train(tmp_path, "ckpt", fp32, "train.activation_checkpointing=true"),
    )
    assert comparable(plain) == comparable(checkpointed)
    a, b = final_weights(plain), final_weights(checkpointed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_update_in_backward_equals_the_step_after_it(tmp_path):
    """fp32 moments: grpolab's per-parameter AdamW inside the backward against torch's fused AdamW after it (the
    two kernels round differently: equal to 1e-6 after 3 steps)."""
    after, inside = train(tmp_path, "after"), train(tmp_path, "inside", "train.optimizer_in_backward=true")
    a, b = final_weights(after), final_weights(inside)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    first = [comparable(run)[0] for run in (after, inside)]
    assert first[0]["loss"] == pytest.approx(first[1]["loss"], abs=1e-7)
    assert first[0]["grad_norm"] == pytest.approx(first[1]["grad_norm"], rel=1e-5)


def test_8bit_moments_train(tmp_path):
    records = comparable(train(tmp_path, "8bit", "train.optimizer=adamw_8bit"))
    assert len(records) == 3 and all(r["grad_norm"] > 0 and r["skipped_updates"] == 0 for r in records)


def test_sigkill_then_resume_is_bitwise_with_every_lever_on(tmp_path):
    long = [*TINY, *LEVERS, "train.max_steps=10", "train.save_every=3", "eval.n=4", "log.report=false"]
    straight = tmp_path / "straight"
    run_cli("train", *long, f"output_dir={straight}", check=True)
    killed = tmp_path / "killed"
    kill_at_checkpoint(["train", *long, f"output_dir={killed}"], killed, 6)
    run_cli("train", "--resume", str(killed), check=True)
    assert comparable(killed) == comparable(straight)
    a, b = final_weights(straight), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_engine_on_the_trainers_weights(tmp_path):
    shared = train(tmp_path, "shared", "rollout.dtype=fp32", "rollout.share_weights=true")
    copied = train(tmp_path, "copied", "rollout.dtype=fp32")
    assert len(comparable(shared)) == 3
    # the same fp32 model, sampled through the transformers forward instead of the packed decoder
    assert comparable(shared)[0]["reward_mean"] == pytest.approx(comparable(copied)[0]["reward_mean"], abs=0.5)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["train.optimizer_in_backward=true"], "train.max_grad_norm: set it to 0"),
        (
            ["train.optimizer_in_backward=true", "train.max_grad_norm=0", "train.micro_batch_size=4"],
            "train.micro_batch_size: set it >= 8",
        ),  # fmt: skip
        (
            [
                "train.optimizer_in_backward=true",
                "train.max_grad_norm=0",
                "train.micro_batch_size=8",
                "algorithm=ppo",
                "rollout.group_size=1",
                "rollout.prompts_per_step=8",
            ],
            "ppo is not supported",
        ),  # fmt: skip
        (["train.activation_offload=true"], "needs train.activation_checkpointing=true"),
        (["rollout.share_weights=true"], "rollout.dtype=fp32"),
        (["train.optimizer=adam8"], "train.optimizer"),
    ],
)
def test_refusals_are_one_line(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, [*TINY, *overrides])


def test_offload_on_a_cpu_run_is_refused_before_the_run_folder(tmp_path):
    run_dir = tmp_path / "offload"
    result = run_cli("train", *TINY, "train.activation_checkpointing=true", "train.activation_offload=true",
                     f"output_dir={run_dir}")  # fmt: skip
    assert result.returncode != 0
    assert "train.activation_offload" in result.stderr and "Traceback" not in result.stderr
    assert not (run_dir / "metrics.jsonl").exists()
