"""pi_ref, the model the KL term holds the policy to: a frozen copy of the policy, or (with LoRA) the policy
with its adapter disabled, so no second model is held at all. `reset()` is R1's / DeepSeekMath's
pi_ref <- pi_theta."""

from __future__ import annotations

import contextlib
import copy

import torch

from grpolab.model.lora import fold_adapter, is_lora, matmul_weights


class Reference:
    """pi_ref: a frozen copy of the policy, or the LoRA policy with its adapter disabled."""

    def __init__(self, policy, frozen=None, bf16_matmuls: bool = False):
        """`frozen`: a ready-made copy (e.g. sharded like the policy); by default a deep copy of `policy`,
        whose matmul weights are stored in bf16 with `bf16_matmuls` (autocast would cast them anyway)."""
        self.policy = policy
        self.lora = is_lora(policy)
        if frozen is None and not self.lora:
            frozen = frozen_copy(policy, bf16_matmuls)
        self.frozen = frozen
        self.resets = 0

    @contextlib.contextmanager
    def model(self):
        """The reference model to run a forward pass with (inside the `with`)."""
        if self.frozen is not None:
            yield self.frozen
            return
        with self.policy.disable_adapter():
            yield self.policy

    def reset(self) -> None:
        """pi_ref <- pi_theta."""
        if self.lora:
            fold_adapter(self.policy)
        else:
            self.frozen.load_state_dict(self.policy.state_dict())
        self.resets += 1


def frozen_copy(policy, bf16_matmuls: bool):
    """A frozen deep copy of `policy`; with `bf16_matmuls` its matmul weights (`lora.matmul_weights`) are made
    in bf16 as they are copied, so that no second fp32 copy of them exists even for a moment (6 GB for a 1.5B
    model, which would otherwise stay in the process's heap)."""
    memo = {}
    if bf16_matmuls:
        for weight in matmul_weights(policy):
            memo[id(weight)] = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
    return copy.deepcopy(policy, memo).eval().requires_grad_(False)
