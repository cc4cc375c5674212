"""The model card (grpolab/report/model_card.py) from hand-made run folders: every piece of information it
promises, the hub metadata, and the runs that lack a file."""

from __future__ import annotations

import datetime
import json
import os
from importlib import metadata

import pytest
import yaml

from grpolab.config import load_config, to_yaml
from grpolab.report.model_card import base_model_id, model_card, train_command, write_model_card

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"
SETTINGS = [
    f"model={QWEN}",
    "task=gsm8k",
    "train.max_steps=40",
    "train.learning_rate=3e-6",
    "rollout.prompts_per_step=5",
    "rollout.group_size=6",
    "grpo.beta=0.01",
    "grpo.mu=2",
    "grpo.eps_low=0.2",
    "grpo.eps_high=0.28",
    "grpo.advantage=rloo",
    "grpo.aggregation=token",
    "grpo.kl_estimator=k2",
    "lora.rank=16",
]
FINISHED = datetime.datetime(2024, 5, 6, 12, 0, tzinfo=datetime.timezone.utc).timestamp()


def make_run(folder, settings=SETTINGS, evaluation: dict | None = None, steps: int = 3):
    """A run folder as training leaves it: config.yaml, metrics.jsonl, eval.json (unless None), final/."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(to_yaml(load_config(None, settings)))
    lines = [json.dumps({"step": step, "reward_mean": 0.1 * step}) for step in range(1, steps + 1)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "final").mkdir()
    (folder / "final" / "config.json").write_text("{}")
    if evaluation is not None:
        (folder / "eval.json").write_text(json.dumps(evaluation))
        os.utime(folder / "eval.json", (FINISHED, FINISHED))
    return folder


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_holds_every_piece(tmp_path):
    run = make_run(
        tmp_path / "gsm8k-rloo", evaluation={"n": 64, "before": {"accuracy": 0.125}, "after": {"accuracy": 0.5}}
    )
    command = "grpolab train task=gsm8k grpo.beta=0.01"
    card = model_card(run, command=command)
    meta = front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["base_model"] == QWEN
    assert meta["tags"] == ["grpolab", "grpo"]
    for row in [
        f"| base model | `{QWEN}` ([{QWEN}](https://huggingface.co/{QWEN})) |",
        "| task | `gsm8k`, template `default` |",
        "| algorithm | `grpo` |",
        "| steps done | 3 of 40 |",
        "| prompts per step × group size | 5 × 6 |",
        "| learning rate | 3e-06 (constant schedule) |",
        "| KL coefficient beta, estimator | 0.01, `k2` |",
        "| optimisation passes per rollout mu | 2 |",
        "| clip range eps_low / eps_high | 0.2 / 0.28 |",
        "| advantage | `rloo` |",
        "| loss aggregation | `token` |",
        "| LoRA | rank 16, alpha 16; merged into these weights |",
        "| before training | 0.125 |",
        "| after training | 0.500 |",
    ]:  # fmt: skip
        assert row in card, row
    assert "greedy accuracy on 64 held-out examples" in card
    assert f"```text\n{command}\n```" in card
    assert "exact record of every setting" in card
    assert (run / "config.yaml").read_text().rstrip("\n") in card  # the whole config, verbatim
    assert f"grpolab {metadata.version('grpolab')}; training finished on 2024-05-06." in card
    assert card.startswith("---\n") and "# gsm8k-rloo" in card


def test_card_without_eval_json(tmp_path):
    run = make_run(tmp_path / "run", settings=["model=tiny-random", "train.max_steps=3"], evaluation=None)
    card = model_card(run)
    assert "no eval.json" in card
    assert "| steps done | 3 of 3 |" in card
    assert "base_model" not in front_matter(card)  # tiny-random has no hub page
    assert "LoRA" not in card
    assert "The command that trained it" not in card  # not known: the config.yaml stands alone
    assert "exact record of every setting" in card


def test_card_of_a_run_without_evaluation_examples(tmp_path):
    run = make_run(tmp_path / "run", evaluation={"n": 0})
    assert "No held-out evaluation was run (eval.n=0)." in model_card(run)


def test_card_of_a_run_without_config_or_metrics(tmp_path):
    run = tmp_path / "bare"
    (run / "final").mkdir(parents=True)
    card = model_card(run)
    assert "| steps done | n/a |" in card and "no config.yaml" in card
    assert front_matter(card)["tags"] == ["grpolab", "grpo"]


def test_write_model_card_uses_the_train_command_line(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", evaluation={"n": 8, "before": {"accuracy": 0.0}, "after": {"accuracy": 0.25}})
    monkeypatch.setattr("sys.argv", ["/venv/bin/grpolab", "train", "model=tiny-random", "output_dir=/tmp/a b"])
    path = write_model_card(run)
    assert path == run / "final" / "README.md"
    assert "grpolab train model=tiny-random 'output_dir=/tmp/a b'" in path.read_text()
    assert "grpolab train model=qwen" in write_model_card(run, command="grpolab train model=qwen").read_text()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("tiny-random", None),
        (QWEN, QWEN),
        ("/models/qwen", None),
        ("./runs/a/final", None),
        ("~/models/qwen", None),
        ("runs/a/final", None),
        ("", None),
        (None, None),
    ],
)
def test_base_model_id(name, expected):
    assert base_model_id(name) == expected


def test_a_local_folder_shaped_like_a_hub_id_is_not_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert base_model_id("models/mine") is None


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/venv/bin/grpolab", "train", "model=tiny-random"], "grpolab train model=tiny-random"),
        (["/src/grpolab/__main__.py", "train", "--quiet"], "grpolab train --quiet"),
        (["/venv/bin/grpolab", "push", "run", "me/x"], None),
        (["/venv/bin/pytest", "train"], None),
        (["/venv/bin/grpolab"], None),
        ([], None),
    ],
)
def test_train_command(argv, expected):
    assert train_command(argv) == expected
