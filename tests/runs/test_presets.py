"""Every shipped preset, and the knobs the presets do not cover, run 2 steps on tiny-random through the CLI."""

import json

import pytest

from grpolab.cli import main
from grpolab.config import load_config
from grpolab.errors import ConfigError
from tests.conftest import PRESETS, ROOT

SMALL = [
    "model=tiny-random",
    "rollout.engine=hf",
    "train.max_steps=2",
    "rollout.prompts_per_step=2",
    "rollout.group_size=3",
    "rollout.max_new_tokens=12",
    "eval.n=0",  # evaluation has its own tests; these check the training knobs
    "log.quiet=true",
]
METRICS = [
    "kl",
    "clip_low_frac",
    "clip_high_frac",
    "entropy",
    "zero_std_groups_frac",
    "groups_dropped",
    "sampling_rounds",
    "truncated_frac",
    "overlong_filtered_frac",
    "logprob_mismatch",
]


def train_cli(tmp_path, *args) -> list[dict]:
    out = tmp_path / "run"
    assert main(["train", *args, *SMALL, f"output_dir={out}"]) == 0
    assert (out / "final" / "config.json").exists() and (out / "eval.json").exists()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_two_steps(tmp_path, preset):
    path = ROOT / "grpolab" / "configs" / f"{preset}.yaml"
    records = train_cli(tmp_path, str(path))
    assert [r["step"] for r in records] == [1, 2]
    for key in METRICS:
        assert key in records[-1], key


@pytest.mark.parametrize(
    "knobs",
    [
        ["grpo.advantage=process", "grpo.mu=2"],
        ["algorithm=online_rft", "grpo.beta=0"],
        ["grpo.kl_in_reward=true", "grpo.kl_estimator=k1"],
        ["grpo.overlong_filter=true", "grpo.advantage=rloo", "grpo.entropy_coef=0.01"],
        ["grpo.iteration_steps=1", "grpo.ref_reset_every=1", "grpo.aggregation=token"],
    ],
    ids=["process", "online_rft", "kl_in_reward", "overlong_filter", "iterative"],
)
def test_knobs_run_two_steps(tmp_path, knobs):
    records = train_cli(tmp_path, *knobs)
    assert len(records) == 2
    if "grpo.kl_in_reward=true" in knobs:
        assert "kl_in_reward" in records[0]
    if "grpo.iteration_steps=1" in knobs:
        assert records[0]["rm_retrained"] == 0  # the arithmetic task has no reward model to retrain


def test_lora_run_saves_a_plain_merged_model_and_the_adapter(tmp_path):
    pytest.importorskip("peft")
    train_cli(tmp_path, "lora.rank=4", "lora.target_modules=q_proj,v_proj")
    final = tmp_path / "run" / "final"
    assert not (final / "adapter_config.json").exists()  # a plain HF folder
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    from grpolab.model.loading import load_model

    load_model(str(final))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["grpo.kl_in_reward=true", "grpo.beta=0"], "grpo.kl_in_reward"),
        (["grpo.kl_in_reward=true", "grpo.advantage=process"], "grpo.kl_in_reward"),
        (["reward.overlong_buffer=1.5"], "reward.overlong_buffer"),
        (["grpo.algorithm=ppo"], "grpo.algorithm: is now the top-level key algorithm"),
        (["algorithm=reinforce"], "algorithm"),
        (["grpo.dynamic_sampling_max_rounds=0"], "grpo.dynamic_sampling_max_rounds"),
        (["template=chatml"], "template"),
        (["lora.rank=-1"], "lora.rank"),
    ],
)
def test_bad_knobs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_every_preset_loads_with_its_documented_values():
    assert load_config(str(ROOT / "grpolab" / "configs" / "grpo.yaml")).grpo.beta == 0.04
    r1 = load_config(str(ROOT / "grpolab" / "configs" / "r1_zero.yaml"))
    assert (r1.grpo.beta, r1.template, r1.train.learning_rate) == (0.001, "r1_zero", 3e-6)
    dapo = load_config(str(ROOT / "grpolab" / "configs" / "dapo.yaml")).grpo
    assert (dapo.eps_high, dapo.aggregation, dapo.dynamic_sampling) == (0.28, "token", True)
    assert load_config(str(ROOT / "grpolab" / "configs" / "dr_grpo.yaml")).grpo.advantage == "none"
    assert load_config(str(ROOT / "grpolab" / "configs" / "gspo.yaml")).grpo.ratio_level == "sequence"


def test_process_advantages_need_a_task_with_step_rewards():
    from grpolab.tasks.base import Task
    from grpolab.training.setup import check_task

    class NoSteps(Task):
        name = "no-steps"

    with pytest.raises(ConfigError, match="grpo.advantage"):
        check_task(NoSteps(), load_config(None, ["grpo.advantage=process"]))


def test_online_rft_refuses_an_advantage_it_would_ignore():
    with pytest.raises(ConfigError, match="grpo.advantage"):
        load_config(None, ["algorithm=online_rft", "grpo.advantage=rloo"])
