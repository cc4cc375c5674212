"""Distillation maths, pure torch: the token-level loss (KL(teacher || student) on the teacher's top-k tokens)
and on-policy distillation's per-token advantage (the student's own samples, scored by the teacher).

(choice) The teacher's distribution is truncated to its k most likely tokens and renormalised, p~; the
student keeps its full softmax q. The per-token loss sum_i p~_i (log p~_i - log q_i) over the top-k is
>= 0 (it is KL(p~ || q restricted to the top-k, renormalised) minus the log of q's mass there) and is 0
exactly when the student matches p~ on those tokens and puts no mass elsewhere. Storing or streaming k
logits instead of the whole vocabulary is what makes offline teacher logits affordable (MiniLLM, DistiLLM
and Gemma 2 distil on truncated teacher distributions). Logits are divided by the distillation
temperature before both softmaxes; the T^2 factor of Hinton et al. is not applied (the default T is 1).
"""

from __future__ import annotations

import torch


def topk_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, k: int, temperature: float = 1.0):
    """Per-token KL(teacher top-k || student), [N], from logits [N, V] of both models."""
    teacher_logprobs = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)  # [N, V]
    top_logprobs, top_ids = teacher_logprobs.topk(min(k, teacher_logits.shape[-1]), dim=-1)  # [N, k]
    top_logprobs = top_logprobs - torch.logsumexp(top_logprobs, dim=-1, keepdim=True)  # renormalised, [N, k]
    student_logprobs = torch.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, top_ids)  # [N, k]
    return (top_logprobs.exp() * (top_logprobs - student_logprobs)).sum(-1)  # [N]


def reverse_kl_advantages(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor):
    """On-policy distillation (GKD, Agarwal et al. 2024; Thinking Machines' on-policy distillation): the per-token
    advantage -(log p_student(y_t) - log p_teacher(y_t)) of the student's sampled tokens, [B, T], 0 off `mask`.

    Its mean over the sampled tokens is minus the k1 estimate of the reverse KL(student || teacher) per token.
    (choice) Each token's advantage is its own term only, not the sum over the tokens after it (a discount of 0):
    the policy-gradient loss -A_t * ratio_t then pulls each sampled token toward the teacher's log-prob of it.
    The log-probs are detached values (the student's from the rollout's no-gradient scoring pass)."""
    return -(student_logprobs - teacher_logprobs) * mask
