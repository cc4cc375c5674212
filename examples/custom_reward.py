# %% [markdown]
# # Your own data and your own reward, from Python
#
# `grpolab.train` runs what `grpolab train` runs and returns the run folder. Here: a small data set built
# in Python, a reward of our own beside the task's correctness check, then the held-out accuracy before
# and after. Run it as a script (`python examples/custom_reward.py`, ~10 minutes on a laptop CPU with the
# default SmolLM2-135M-Instruct) or cell by cell in a notebook. Any `key=value` after the script's name is
# passed on, e.g. `python examples/custom_reward.py model=tiny-random train.max_steps=2` for a smoke test.

# %%
import json
import random
import sys

import grpolab

# %% [markdown]
# A reward is any function of `(completion, example) -> float | None` (None: "does not apply"). It runs in
# grpolab's reward workers, with a time limit, and is logged as `rewards/<name>`.


# %%
def concise(completion: str, example: dict) -> float:
    """1 for an answer of at most 40 characters: the same correctness in fewer tokens."""
    return 1.0 if len(completion.strip()) <= 40 else 0.0


# %% [markdown]
# Data: rows with a `question` and an `answer` (a list of dicts, or a `datasets.Dataset`). grpolab holds out
# every tenth row for evaluation and never trains on it. Answers are checked with math-verify.

# %%
rng = random.Random(0)
rows = []
for _ in range(300):
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    rows.append({"question": f"What is {a} + {b}? Give the number.", "answer": str(a + b)})

# %%
run = grpolab.train(
    {"train.max_steps": 30, "reward.weights.concise": 0.25, "eval.n": 30},
    dataset=rows,
    reward_funcs=[concise],
    overrides=sys.argv[1:],
)

# %% [markdown]
# The run folder holds config.yaml (it records `reward.functions: [python:concise]` and `task: python:dataset`:
# a resume passes them again), metrics.jsonl, eval.json, report.md and the trained model in final/.

# %%
print(json.dumps(json.loads((run / "eval.json").read_text()), indent=2))
last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
print({key: value for key, value in last.items() if key.startswith("rewards/")})
