"""Process supervision end to end: the arithmetic task's step rewards, mapped from character offsets to
token indices, become token advantages."""

import pytest
import torch

from grpolab.algorithms.advantages import process_advantages
from grpolab.engine.base import Completion
from grpolab.model.loading import build_tiny_tokenizer
from grpolab.rollout.batch import RolloutBatch
from grpolab.tasks.arithmetic import ArithmeticTask, arithmetic_step_rewards
from grpolab.training import experience


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("3 + 4 = 7\n7 * 2 = 15\nSo 14", [(9, 1.0), (20, 0.0), (26, 1.0)]),
        ("The answer is 14.", [(17, 1.0)]),
        ("12 x 2 = 24 and 1 + 1 = 3\n13", [(25, 0.0), (28, 0.0)]),
        ("", [(0, 0.0)]),
    ],
)
def test_arithmetic_step_rewards(completion, expected):
    assert arithmetic_step_rewards(completion, "14") == expected


def test_token_char_ends_with_the_character_tokenizer():
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer("ab\nc", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert experience.token_char_ends(tokenizer, ids) == [1, 2, 3, 4, 4]  # EOS decodes to nothing


def test_process_advantages_for_batch_places_steps_at_their_tokens():
    tokenizer = build_tiny_tokenizer()
    task = ArithmeticTask()
    texts = ["1 + 1 = 2\n2", "1 + 1 = 3\n2"]  # answer 2: the second completion's first step is wrong
    completions = [Completion(tokenizer(t, add_special_tokens=False)["input_ids"], [], "stop", t) for t in texts]
    width = max(len(c.token_ids) for c in completions)
    batch = RolloutBatch(
        examples=[{"answer": "2"}],
        completions=completions,
        prompt_ids=torch.zeros(2, 1, dtype=torch.long),
        prompt_mask=torch.ones(2, 1, dtype=torch.long),
        completion_ids=torch.zeros(2, width, dtype=torch.long),
        completion_mask=torch.ones(2, width, dtype=torch.long),
        sampling_logprobs=torch.zeros(2, width),
        rewards=torch.zeros(1, 2),
    )
    advantages = experience.process_advantages_for_batch(batch, task, tokenizer)
    # steps: completion 0 -> (char 9: 1.0, char 11: 1.0); completion 1 -> (char 9: 0.0, char 11: 1.0)
    # each character is one token, so the steps end at tokens 8 and 10
    expected = process_advantages([[1.0, 1.0], [0.0, 1.0]], [[8, 10], [8, 10]], width)
    torch.testing.assert_close(advantages, expected)
    assert advantages[0, 0] > advantages[1, 0]  # the wrong step lowers every token before it
    torch.testing.assert_close(advantages[0, 9:], advantages[1, 9:])  # after it both share the last step
