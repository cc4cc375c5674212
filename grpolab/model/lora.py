"""LoRA through peft, and the reference policy pi_ref (ALGORITHMS.md section 4).

With LoRA the reference is the base model with the adapter switched off (peft's `disable_adapter()`), so
no second copy of the weights is held. Without LoRA it is a frozen deep copy, loaded only when beta > 0.

Resetting pi_ref <- pi_theta (R1 every K steps, DeepSeekMath's outer iterations) copies the weights into
the frozen copy; with LoRA it folds the adapter into the base weights and zeroes LoRA's B matrices, so
that "adapter off" is the current policy and the adapter again starts from a zero update. The optimizer
keeps its LoRA parameters (and their Adam moments) across a reset.

Saving: `final/` is always a plain Hugging Face folder, the adapter merged into the weights. The adapter
alone is saved to `adapter/` too, but only while it still applies to the original base model, i.e. when
the reference was never reset (a reset moves the adapter's update into the base weights).
"""

from __future__ import annotations

from pathlib import Path

import torch

from grpolab.errors import ConfigError


def apply_lora(model, rank: int, alpha: float, dropout: float, target_modules: str):
    """Wrap any HF causal LM in a peft LoRA adapter; returns the PeftModel (only the adapter trains)."""

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("lora.rank: LoRA needs peft (pip install 'grpolab[lora]')") from None

    targets = target_modules.strip()
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. a target module name the model does not have
        raise ConfigError(f"lora.target_modules: {str(error).splitlines()[0]}") from None


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


@torch.no_grad()
def fold_adapter(model) -> None:
    """Add every LoRA update into its base weight and zero B: the policy is unchanged, the adapter is 0."""
    for layer in lora_layers(model):
        for name in layer.active_adapters:
            if name not in layer.lora_B:
                continue
            base = layer.get_base_layer()
            base.weight += layer.get_delta_weight(name).to(base.weight.dtype)
            layer.lora_B[name].weight.zero_()


def matmul_weights(model) -> list[torch.nn.Parameter]:
    """The parameters a frozen model stores in bf16 (`training/reference.frozen_copy`): every Linear's weight and
    bias, except an output head tied to the input embedding. Under bf16 autocast they are cast to bf16 for every
    forward anyway, so this halves their memory and skips the cast without changing the result. Embeddings and
    norms stay fp32 (so the residual stream stays fp32), and so does a tied output head."""
    embedding = model.get_input_embeddings().weight
    found = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not embedding:
            found += [p for p in (module.weight, module.bias) if p is not None]
    return found


def save_policy(policy, tokenizer, run_dir: Path, adapter_applies_to_base: bool, save_model, log=print):
    """Write `final/` as a plain HF folder (LoRA merged) and, with LoRA, `adapter/` when it still applies."""
    if not is_lora(policy):
        save_model(policy, tokenizer, run_dir / "final")
        return
    if adapter_applies_to_base:
        save_model(policy, None, run_dir / "adapter")  # atomic, and readable by the group as final/ is
    else:
        log("LoRA: the reference was reset into the base weights, so only the merged model is saved (final/)")
    save_model(policy.merge_and_unload(), tokenizer, run_dir / "final")
