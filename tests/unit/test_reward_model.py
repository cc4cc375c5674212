"""The reward-model reward with a tiny randomly initialised Llama classifier built in code."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from grpolab.config import RewardConfig
from grpolab.model.loading import build_tiny_tokenizer
from grpolab.rewards.reward_model import RewardModelScorer
from grpolab.rewards.runner import RewardRunner
from grpolab.tasks import get_task


def tiny_classifier(folder, num_labels=1):
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_scores_match_the_model_and_do_not_depend_on_batching(tmp_path):
    folder = tiny_classifier(tmp_path / "rm")
    examples = [{"question": "What is 2 + 2?"}, {"question": "What is 3 + 5?"}, {"question": "Hi"}]
    completions = ["4", "It is 8, since 3 + 5 = 8.", "hello there"]
    one_by_one = RewardModelScorer(folder, lambda e: e["question"], batch_size=1)
    batched = RewardModelScorer(folder, lambda e: e["question"], batch_size=3)
    expected = one_by_one.batch(completions, examples)
    assert batched.batch(completions, examples) == pytest.approx(expected, abs=1e-5)
    model, tokenizer = one_by_one.load()
    text = one_by_one.render(examples[1]["question"], completions[1])
    with torch.no_grad():
        direct = model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()
    assert expected[1] == pytest.approx(direct, abs=1e-5)
    assert len(set(round(v, 6) for v in expected)) == 3  # different inputs, different scores


def test_a_task_offers_it_by_name_and_the_runner_calls_it_once_per_batch(tmp_path):
    task = get_task("countdown", RewardConfig(model=tiny_classifier(tmp_path / "rm")))
    functions = task.reward_functions()
    assert "reward_model" in functions
    examples = task.eval_examples(2)
    runner = RewardRunner(functions, {"countdown": 1.0, "reward_model": 0.5}, num_workers=0)
    scores = runner.score(["<answer>1</answer>", "no"], examples)
    assert all(isinstance(v, float) for v in scores.parts["reward_model"])


def test_a_classifier_with_several_labels_is_refused(tmp_path):
    scorer = RewardModelScorer(tiny_classifier(tmp_path / "rm", num_labels=2), lambda e: "q")
    with pytest.raises(ValueError, match="has 2 labels; a reward model has one"):
        scorer.batch(["a"], [{}])
