"""Cross-check of grpolab's loss against TRL's GRPOTrainer loss on identical tensors (value and gradient).

Runs wherever `trl` is importable: the `test` extra installs it (pyproject.toml), so CI runs it; skipped with
the reason otherwise.
TRL's `_compute_loss` is called on a stand-in trainer object whose log-prob function returns our tensors,
so only the loss arithmetic of the two libraries meets. Variant map (ours -> TRL):
  sequence aggregation -> loss_type="grpo"; token (whole batch) -> "bnpo" and "dapo";
  constant -> "dr_grpo"; GSPO sequence ratio -> importance_sampling_level="sequence";
  k3 KL in the loss -> beta; eps_low / eps_high -> epsilon / epsilon_high; entropy bonus -> entropy_coef.
TRL's GRPO loss has only the k3 estimator, so k1 / k2 have no counterpart here.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from grpolab.algorithms.objective import Normalisers, grpo_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")


class StandInTrainer:
    """Only the attributes TRL's `_compute_loss` reads, with our log-probs and entropies injected."""

    def __init__(self, logprobs, entropy, loss_type, level, beta, eps_low, eps_high, max_length, entropy_coef):
        self._logprobs, self._entropy = logprobs, entropy
        self.loss_type, self.importance_sampling_level, self.beta = loss_type, level, beta
        self.epsilon_low, self.epsilon_high = eps_low, eps_high
        self.max_completion_length = max_length
        self.aux_loss_enabled = False
        self.top_entropy_quantile = 1.0
        self.off_policy_mask_threshold = None
        self.use_vllm = False
        self.current_gradient_accumulation_steps = 1
        self._entropy_bonus_enabled = entropy_coef != 0
        self.entropy_coef, self.use_adaptive_entropy = entropy_coef, False
        self.args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
        self.model = SimpleNamespace(training=True)
        self.accelerator = SimpleNamespace(
            num_processes=1,
            sync_gradients=True,
            gather=lambda x: x,
            gather_for_metrics=lambda x: x,
            reduce=lambda x, reduction="sum": x,
        )
        self._metrics = defaultdict(lambda: defaultdict(list))

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        return self._logprobs, self._entropy, None

    def __getattr__(self, name):  # TRL helpers such as get_high_entropy_mask, unused with these settings
        return getattr(trl_grpo.GRPOTrainer, name).__get__(self)


def tensors(seed: int, rows: int = 5, width: int = 6):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).double()  # [B, T]
    logprobs = -torch.rand(rows, width, generator=generator, dtype=torch.float64) * 3
    old = logprobs + 0.2 * torch.randn(rows, width, generator=generator, dtype=torch.float64)
    ref = logprobs + 0.2 * torch.randn(rows, width, generator=generator, dtype=torch.float64)
    advantages = torch.randn(rows, generator=generator, dtype=torch.float64)
    entropy = torch.rand(rows, width, generator=generator, dtype=torch.float64)
    return logprobs, old, ref, advantages, mask, entropy


CASES = {
    # id: (our aggregation, our ratio level, TRL loss_type, TRL importance_sampling_level)
    "grpo-sequence-mean": ("sequence", "token", "grpo", "token"),
    "bnpo-token-mean": ("token", "token", "bnpo", "token"),
    "dapo-token-mean": ("token", "token", "dapo", "token"),
    "dr_grpo-constant": ("constant", "token", "dr_grpo", "token"),
    "gspo-sequence-ratio": ("sequence", "sequence", "grpo", "sequence"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("beta, eps_low, eps_high, entropy_coef", [(0.0, 0.2, 0.2, 0.0), (0.04, 0.2, 0.28, 0.01)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_gradient_match_trl(case, beta, eps_low, eps_high, entropy_coef, seed):
    aggregation, ratio_level, loss_type, level = CASES[case]
    if ratio_level == "sequence":  # GSPO's clip range: the sequence ratio stays near 1
        eps_low, eps_high = 3e-4, 4e-4
    logprobs, old, ref, advantages, mask, entropy = tensors(seed)
    rows, width = mask.shape
    max_length = width + 3

    ours_input = logprobs.clone().requires_grad_(True)
    knobs = SimpleNamespace(
        ratio_level=ratio_level, eps_low=eps_low, eps_high=eps_high, beta=beta, kl_estimator="k3",
        kl_in_reward=False, aggregation=aggregation, entropy_coef=entropy_coef,
    )  # fmt: skip
    normalisers = Normalisers(rows, float(mask.sum()), max_length)
    ours, _ = grpo_loss(
        ours_input, old, ref if beta else None, advantages.unsqueeze(1), mask, knobs, normalisers, entropy
    )
    ours.backward()

    trl_input = logprobs.clone().requires_grad_(True)
    stand_in = StandInTrainer(trl_input, entropy, loss_type, level, beta, eps_low, eps_high, max_length, entropy_coef)
    inputs = {
        "prompt_ids": torch.zeros(rows, 1, dtype=torch.long),
        "prompt_mask": torch.ones(rows, 1, dtype=torch.long),
        "completion_ids": torch.zeros(rows, width, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    theirs = trl_grpo.GRPOTrainer._compute_loss(stand_in, None, inputs)
    theirs.backward()

    torch.testing.assert_close(ours.detach(), theirs.detach())
    torch.testing.assert_close(ours_input.grad, trl_input.grad)
