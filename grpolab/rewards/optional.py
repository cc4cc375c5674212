"""The reward functions every task offers besides its own, by name, all with weight 0 unless the config
sets `reward.weights.<name>`:

- `r1_format`: the R1 template, strict (1 or 0); `r1_format_partial`: 0.25 per template tag used once;
- `language`: R1's language consistency of the chain of thought (`reward.language`, default English);
- `overlong`: DAPO's soft overlong punishment, L_max = the rollout's `max_new_tokens`, L_cache =
  `reward.overlong_buffer` of it (a fraction); `length_penalty`: -tokens / max_new_tokens;
- `reward_model`: the sequence-classification model named by `reward.model` (only when set).

The length rewards read `completion_tokens` and `max_new_tokens` from the row (the rollout adds them);
where they are missing (e.g. `grpolab score` on text without token counts) they return None: not applicable.
"""

from __future__ import annotations

from collections.abc import Callable

from grpolab.errors import ConfigError
from grpolab.rewards.format import r1_format_partial, r1_format_strict
from grpolab.rewards.language import SCRIPTS, language_consistency
from grpolab.rewards.length import length_penalty, soft_overlong_punishment
from grpolab.rewards.runner import cheap


def overlong_reward(buffer_fraction: float) -> Callable[[str, dict], float | None]:
    def overlong(completion: str, example: dict) -> float | None:
        if "completion_tokens" not in example or "max_new_tokens" not in example:
            return None
        max_length = int(example["max_new_tokens"])
        return soft_overlong_punishment(
            int(example["completion_tokens"]), max_length, int(buffer_fraction * max_length)
        )

    return overlong


def length_reward(completion: str, example: dict) -> float | None:
    if "completion_tokens" not in example or "max_new_tokens" not in example:
        return None
    return length_penalty(int(example["completion_tokens"]), int(example["max_new_tokens"]))


def optional_rewards(config, question_of: Callable[[dict], str]) -> dict[str, Callable]:
    """The optional reward functions (module docstring) for a `RewardConfig`."""
    language = config.language
    if language not in SCRIPTS:
        raise ConfigError(f"reward.language: got {language!r}, expected one of {', '.join(SCRIPTS)}")
    functions: dict[str, Callable] = {
        "r1_format": lambda completion, example: r1_format_strict(completion),
        "r1_format_partial": lambda completion, example: r1_format_partial(completion),
        "language": lambda completion, example: language_consistency(completion, language),
        "overlong": overlong_reward(config.overlong_buffer),
        "length_penalty": length_reward,
    }
    for function in functions.values():
        cheap(function)  # pure string work: in this process beats a round trip to a worker
    if config.model:
        from grpolab.rewards.reward_model import RewardModelScorer

        functions["reward_model"] = RewardModelScorer(config.model, question_of)
    return functions
