import pytest

from grpolab.config import describe_keys, load_config
from grpolab.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  group_size: 4\ngrpo:\n  beta: 0.0\n")
    config = load_config(str(path), ["train.learning_rate=1e-5", "grpo.aggregation=token", "model=tiny-random"])
    assert config.rollout.group_size == 4
    assert config.grpo.beta == 0.0
    assert config.train.learning_rate == 1e-5
    assert config.grpo.aggregation == "token"
    assert config.model == "tiny-random"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.bogus=1", "unknown config key 'rollout.bogus'"),
        ("nope=1", "unknown config key 'nope'"),
        ("rollout.group_size=1", "rollout.group_size: got 1, expected an integer >= 2"),
        ("rollout.group_size=abc", "rollout.group_size: got 'abc', expected an integer"),
        ("train.learning_rate=-1", "train.learning_rate: got -1.0, expected a float >= 0"),
        ("grpo.aggregation=mean", "grpo.aggregation: got 'mean', expected one of 'sequence', 'token', 'constant'"),
        ("rollout.temperature=0", "rollout.temperature: 0 (greedy)"),
        ("overwrite=maybe", "overwrite: got 'maybe', expected true or false"),
        ("grpo=1", "grpo: is a section"),
        ("noequals", "is not of the form key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_help_lists_required_keys():
    text = "\n".join(describe_keys())
    for key in [
        "model",
        "task",
        "output_dir",
        "overwrite",
        "seed",
        "rollout.prompts_per_step",
        "rollout.group_size",
        "rollout.max_new_tokens",
        "rollout.temperature",
        "train.max_steps",
        "train.learning_rate",
        "grpo.beta",
        "grpo.mu",
        "grpo.aggregation",
        "eval.n",
    ]:
        assert f"  {key} = " in text


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent.yaml")


def test_malloc_setting_can_be_left_alone(monkeypatch):
    from grpolab.model.memory import keep_freed_memory

    monkeypatch.setenv("GRPOLAB_MALLOC", "default")
    assert keep_freed_memory() is False
