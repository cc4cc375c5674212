"""Token-level distillation loss: KL(teacher || student) on the teacher's top-k tokens. Pure torch maths.

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
