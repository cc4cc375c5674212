import math

import pytest
import torch

from grpolab.algorithms.distillation import topk_kl


def test_full_vocabulary_is_the_exact_kl():
    teacher = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    student = torch.tensor([[math.log(0.25), math.log(0.25), math.log(0.5)]])
    # KL = 0.5 ln(0.5/0.25) + 0.25 ln(1) + 0.25 ln(0.25/0.5) = 0.25 ln 2
    assert topk_kl(teacher, student, k=3).item() == pytest.approx(0.25 * math.log(2), abs=1e-6)


def test_top1_is_the_students_negative_log_likelihood_of_the_teachers_argmax():
    teacher = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    student = torch.tensor([[math.log(0.1), math.log(0.6), math.log(0.3)]])
    assert topk_kl(teacher, student, k=1).item() == pytest.approx(-math.log(0.1), abs=1e-6)


def test_top2_renormalises_the_teacher():
    teacher = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    student = torch.tensor([[math.log(0.4), math.log(0.4), math.log(0.2)]])
    p = [0.5 / 0.8, 0.3 / 0.8]  # renormalised teacher top-2
    expected = p[0] * math.log(p[0] / 0.4) + p[1] * math.log(p[1] / 0.4)
    assert topk_kl(teacher, student, k=2).item() == pytest.approx(expected, abs=1e-6)


def test_zero_when_the_student_matches_and_temperature_scales_logits():
    logits = torch.randn(5, 11)
    assert topk_kl(logits, logits, k=11).abs().max().item() < 1e-6
    # dividing both models' logits by T is the same as feeding logits / T
    teacher, student = torch.randn(4, 7), torch.randn(4, 7)
    assert torch.allclose(
        topk_kl(teacher, student, 3, temperature=2.0), topk_kl(teacher / 2, student / 2, 3), atol=1e-6
    )


def test_on_policy_advantage_is_minus_the_per_token_log_ratio():
    from grpolab.algorithms.distillation import reverse_kl_advantages

    student = torch.tensor([[math.log(0.5), math.log(0.2), 0.0]])
    teacher = torch.tensor([[math.log(0.25), math.log(0.4), -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages = reverse_kl_advantages(student, teacher, mask)
    assert torch.allclose(advantages, torch.tensor([[-math.log(2.0), math.log(2.0), 0.0]]), atol=1e-6)
    # its mean over the sampled tokens is minus the k1 estimate of KL(student || teacher) per token
    assert (-(advantages.sum() / mask.sum())).item() == pytest.approx(0.0, abs=1e-6)
