"""LoRA through peft on tiny-random: the reference is the adapter-disabled policy, a reset folds the adapter
into the base weights without changing the policy, and final/ is a plain HF folder."""

import pytest
import torch

from grpolab.model.loading import ensure_tiny_random, load_model
from grpolab.model.lora import apply_lora, fold_adapter, is_lora
from grpolab.training.reference import Reference

peft = pytest.importorskip("peft")


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture()
def lora_policy():
    model = load_model(str(ensure_tiny_random()))
    policy = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, target_modules="q_proj,v_proj")
    for layer in policy.modules():  # give the adapter a non-zero update, as training would
        if hasattr(layer, "lora_B") and "default" in layer.lora_B:
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    return policy


def test_only_the_adapter_trains(lora_policy):
    trainable = [name for name, p in lora_policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert is_lora(lora_policy)


def test_reference_is_the_base_model_without_a_copy(lora_policy):
    ids = torch.tensor([[7, 8, 9, 10]])
    base = load_model(str(ensure_tiny_random()))
    reference = Reference(lora_policy)
    assert reference.frozen is None  # no second copy of the weights
    with reference.model() as model:
        torch.testing.assert_close(logits(model, ids), logits(base, ids))
    assert not torch.allclose(logits(lora_policy, ids), logits(base, ids))  # the adapter is back on


def test_reset_folds_the_adapter_and_keeps_the_policy(lora_policy):
    ids = torch.tensor([[7, 8, 9, 10]])
    before = logits(lora_policy, ids)
    reference = Reference(lora_policy)
    reference.reset()
    torch.testing.assert_close(logits(lora_policy, ids), before, rtol=1e-5, atol=1e-5)
    with reference.model() as model:  # pi_ref is now the current policy
        torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    assert reference.resets == 1


def test_fold_adapter_zeroes_b(lora_policy):
    fold_adapter(lora_policy)
    b_weights = [m.lora_B["default"].weight for m in lora_policy.modules() if hasattr(m, "lora_B") and m.lora_B]
    assert b_weights and all(torch.count_nonzero(w) == 0 for w in b_weights)


def test_bad_target_module_is_a_config_error():
    from grpolab.errors import ConfigError

    with pytest.raises(ConfigError, match="lora.target_modules"):
        apply_lora(load_model(str(ensure_tiny_random())), 4, 8.0, 0.0, "no_such_proj")
