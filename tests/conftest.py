import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(path.stem for path in (ROOT / "grpolab" / "configs").glob("*.yaml"))  # every shipped preset

# Small settings that make a GRPO run on tiny-random take seconds.
TINY = [
    "model=tiny-random",
    "train.max_steps=3",
    "train.max_minutes=0",  # no time budget: a loaded machine must not change what a test sees
    "rollout.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=16",
    "eval.n=8",
    "eval.max_new_tokens=16",
    "reward.weights.format=1.0",  # random text sometimes ends in a digit: a non-zero signal
]


def run_cli(*args: str, check: bool = False, timeout: int = 600, env: dict | None = None, cwd=ROOT):
    """Run `python -m grpolab ARGS` (from the repository root unless `cwd`); returns the CompletedProcess."""
    result = subprocess.run(
        [sys.executable, "-m", "grpolab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"grpolab {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One 3-step GRPO run on tiny-random through the CLI, shared by the tests that inspect its folder."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    run_cli("train", *TINY, f"output_dir={run_dir}", check=True)
    return run_dir


# A Qwen2 of tiny shape, for `model=random:<config.json>` (the ids are its own tokenizer's, replaced on building)
TINY_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 128,  # more rows than tiny-random's 103 tokens, as real checkpoints pad their vocabulary
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
}


def kill_at_checkpoint(args: list[str], run_dir, step: int) -> None:
    """Start `python -m grpolab ARGS`, kill -9 it once run_dir's checkpoint of `step` exists."""
    import signal

    process = subprocess.Popen([sys.executable, "-m", "grpolab", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while not (run_dir / "checkpoints" / f"step-{step}").exists():
            assert process.poll() is None, "the run ended before the test could kill it"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
