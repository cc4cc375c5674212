"""pi_ref, the model the KL term holds the policy to: a frozen copy of the policy, or (with LoRA) the policy
with its adapter disabled, so no second model is held at all, or (`train.reference_forward=packed`) the
engine's packed copy of the policy's weights, scored without autograd (grpolab/engine/scoring.py). `reset()`
is R1's / DeepSeekMath's pi_ref <- pi_theta."""

from __future__ import annotations

import contextlib
import copy

import torch

from grpolab.config.checks import validate_reference
from grpolab.engine.decoder import PackedDecoder, sliding_window, supports
from grpolab.engine.scoring import PackedScorer
from grpolab.errors import ConfigError
from grpolab.model.lora import fold_adapter, is_lora, matmul_weights


class Reference:
    """pi_ref: a frozen copy of the policy, or the LoRA policy with its adapter disabled."""

    def __init__(self, policy, frozen=None, bf16_matmuls: bool = False, packed_dtype: torch.dtype | None = None):
        """`frozen`: a ready-made copy (e.g. sharded like the policy); by default a deep copy of `policy`,
        whose matmul weights are stored in bf16 with `bf16_matmuls` (autocast would cast them anyway).
        `packed_dtype`: instead of a copy, the engine's packed decoder in that dtype (`packed_reference_dtype`)."""
        self.policy = policy
        self.lora = is_lora(policy)
        self.packed = None
        if packed_dtype is not None:
            self.packed = PackedScorer(PackedDecoder(policy, packed_dtype), sliding_window(policy.config))
        if frozen is None and not self.lora and self.packed is None:
            frozen = frozen_copy(policy, bf16_matmuls)
        self.frozen = frozen
        self.resets = 0

    @contextlib.contextmanager
    def model(self):
        """The reference model to run a forward pass with (inside the `with`)."""
        if self.packed is not None:
            yield self.packed
            return
        if self.frozen is not None:
            yield self.frozen
            return
        with self.policy.disable_adapter():
            yield self.policy

    def reset(self) -> None:
        """pi_ref <- pi_theta."""
        if self.packed is not None:
            self.packed.decoder.load_weights(self.policy)
        elif self.lora:
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


def packed_reference_dtype(config, policy, bf16: bool) -> torch.dtype | None:
    """`train.reference_forward`: the dtype of a packed reference (the trainer's: bf16 where it trains in bf16
    autocast, else fp32), or None for the transformers model; `packed` where it does not run is refused in one
    line: LoRA, FSDP and reference resets by the config's check (`validate_reference`), the model here."""
    if config.train.reference_forward == "transformers":
        return None
    validate_reference(config)
    if not supports(policy, 0):
        raise ConfigError(
            f"train.reference_forward: packed does not run with model_type {policy.config.model_type!r} (packed: "
            "Llama, Qwen2, Mistral with SiLU and a static RoPE); use transformers"
        )
    return torch.bfloat16 if bf16 else torch.float32
