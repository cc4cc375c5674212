"""The policy's optimizer: AdamW with fp32 moments (torch's fused kernel, the default), AdamW with block-wise
8-bit moments (`train.optimizer=adamw_8bit`), and the update run inside the backward pass
(`train.optimizer_in_backward=true`), so that the full set of gradients is never alive at once.

AdamW (Loshchilov & Hutter), per parameter p with gradient g at step t:
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    p <- p (1 - lr wd) - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)

8-bit moments (choice; the idea is Dettmers et al.'s block-wise quantisation, the code table our own). The two
moments are stored in blocks of 256 values, each block as one fp32 scale (its largest |value|) and one byte per
value on a logarithmic scale below it: byte k > 0 stands for scale * exp(-(k - 1) * step). A log scale keeps the
relative error per value the same at every magnitude (the moments of one block span many orders); a linear one
would round most of a block to zero. The first moment is signed (127 magnitudes over 6 decades, <= 5.7% relative
error); the second is unsigned (255 magnitudes over 12 decades, <= 5.6%, so <= 2.8% on sqrt(v)). A second moment
below its block's smallest code is rounded UP to it, never to zero: a zero v under a non-zero m would make the
update m / eps. State: ~2.03 bytes a parameter against fp32 Adam's 8. Tensors under `MIN_8BIT_SIZE` values
(norm weights) keep fp32 moments, as bitsandbytes does. Written in plain PyTorch ops, chunked so that the
temporaries stay small (`CHUNK_BLOCKS`): no compiler and no binary tied to one torch release; it runs wherever
torch does (torchao's low-bit AdamW compiles its step with torch.compile, and bitsandbytes' CPU support is
partial).

Optimizer in backward (as torchtune does): a hook on each parameter runs that parameter's update as soon as its
gradient is accumulated, then frees the gradient. Only one parameter's gradient is alive at a time, instead of
all of them (fp32: 4 bytes a parameter). It needs exactly one backward pass per optimizer step, so it cannot be
combined with gradient accumulation over micro-batches, and no global gradient clipping (the norm is known only
after every parameter has been updated): `Config.validate` refuses both, in one line each. The gradient norm is
still logged (summed as the hooks run). With `train.share_prompts` (the default) every weight serves two passes,
the prompts' and the completions', and the prompt pass's backward comes last: a gradient is complete, and its
hook runs, only then, so nearly all gradients are alive at once anyway. Measured on SmolLM2-135M (plan, 2 x 4
completions x 64 tokens, 8-bit moments, checkpointing): peak 2.61 GB shared, 2.10 GB with
`train.share_prompts=false`, 2.43 GB unshared without the update in the backward.
"""

from __future__ import annotations

import math

import torch

BLOCK = 256
MIN_8BIT_SIZE = 4096
CHUNK_BLOCKS = 16384  # blocks per update chunk: 4M values, ~16 MB per fp32 temporary
FIRST_DECADES, SECOND_DECADES = 6, 12
FIRST_STEP = FIRST_DECADES * math.log(10) / 126  # signed: codes +-1..+-127
SECOND_STEP = SECOND_DECADES * math.log(10) / 254  # unsigned: codes 1..255


def quantise_signed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, BLOCK] fp32 -> (int8 codes [n, BLOCK], fp32 scales [n, 1]); below the last code a value becomes 0."""
    scale = x.abs().amax(1, keepdim=True)
    level = (x.abs() / scale.clamp_min(1e-30)).log_().neg_().div_(FIRST_STEP).round_()  # 0 = the scale
    codes = torch.where(level > 126, 0.0, (level + 1).copysign(x))
    return codes.to(torch.int8), scale


def dequantise_signed(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    k = codes.float()
    value = k.abs().sub_(1).mul_(-FIRST_STEP).exp_().mul_(scale).copysign_(k)
    return value.masked_fill_(k == 0, 0.0)


def quantise_unsigned(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, BLOCK] fp32 >= 0 -> (uint8 codes, fp32 scales [n, 1]); 0 stays 0, anything smaller than the last
    code is rounded up to it."""
    scale = x.amax(1, keepdim=True)
    level = (x / scale.clamp_min(1e-30)).log_().neg_().div_(SECOND_STEP).round_().clamp_(max=254)
    codes = torch.where(x > 0, level + 1, 0.0)
    return codes.to(torch.uint8), scale


def dequantise_unsigned(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    k = codes.float()
    return k.sub(1).mul_(-SECOND_STEP).exp_().mul_(scale).masked_fill_(k == 0, 0.0)


def blocks(n: int) -> int:
    return -(-n // BLOCK)


class AdamW(torch.optim.Optimizer):
    """AdamW with fp32 (`moments="fp32"`) or block-wise 8-bit (`moments="8bit"`) moments, and a per-parameter
    update (`step_parameter`) for the optimizer-in-backward hooks."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 moments: str = "8bit"):  # fmt: skip
        if moments not in ("fp32", "8bit"):
            raise ValueError(f"moments must be 'fp32' or '8bit', not {moments!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.moments = moments
        self.group_of = {id(p): group for group in self.param_groups for p in group["params"]}

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader casts every floating-point parameter's state to the parameter's dtype, which would
        turn the byte codes into fp32 (4x their memory): the codes are set aside and put back as they are."""
        codes, state = {}, {}
        for index, entry in state_dict["state"].items():
            state[index] = {key: value for key, value in entry.items() if not key.endswith("_codes")}
            codes.update({(index, key): value for key, value in entry.items() if key.endswith("_codes")})
        super().load_state_dict({**state_dict, "state": state})
        parameters = [p for group in self.param_groups for p in group["params"]]
        for (index, key), value in codes.items():
            self.state[parameters[index]][key] = value.to(parameters[index].device)
        self.group_of = {id(p): group for group in self.param_groups for p in group["params"]}  # new group dicts

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.step_parameter(p)
        return loss

    def allocate_state(self) -> None:
        """Every parameter's moments now, in one stretch of memory, rather than at the first update: during a
        backward (the update in the backward) they would interleave with its temporaries and fragment the heap."""
        for group in self.param_groups:
            for p in group["params"]:
                self.initial_state(p)

    def initial_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if state:
            return state
        state["step"] = torch.zeros((), dtype=torch.float32)
        if self.moments == "8bit" and p.numel() >= MIN_8BIT_SIZE:
            n = blocks(p.numel())
            state["exp_avg_codes"] = torch.zeros((n, BLOCK), dtype=torch.int8, device=p.device)
            state["exp_avg_scale"] = torch.zeros((n, 1), dtype=torch.float32, device=p.device)
            state["exp_avg_sq_codes"] = torch.zeros((n, BLOCK), dtype=torch.uint8, device=p.device)
            state["exp_avg_sq_scale"] = torch.zeros((n, 1), dtype=torch.float32, device=p.device)
        else:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step_parameter(self, p: torch.Tensor) -> None:
        """One AdamW update of `p` from `p.grad`."""
        group, grad = self.group_of[id(p)], p.grad
        if grad.is_sparse:
            grad = grad.to_dense()
        state = self.initial_state(p)
        eight_bit = "exp_avg_codes" in state
        state["step"] += 1
        t = state["step"].item()
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        step_size, root_correction = lr / (1 - beta1**t), math.sqrt(1 - beta2**t)
        if not eight_bit:
            m, v = state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - lr * decay)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            p.addcdiv_(m, v.sqrt().div_(root_correction).add_(eps), value=-step_size)
            return
        flat_p, flat_g, n = p.view(-1), grad.reshape(-1), p.numel()
        for first in range(0, blocks(n), CHUNK_BLOCKS):
            rows = slice(first, min(first + CHUNK_BLOCKS, blocks(n)))
            start, stop = first * BLOCK, min(rows.stop * BLOCK, n)
            g = torch.zeros((rows.stop - rows.start) * BLOCK, dtype=torch.float32, device=p.device)
            g[: stop - start] = flat_g[start:stop]
            g = g.view(-1, BLOCK)
            m = dequantise_signed(state["exp_avg_codes"][rows], state["exp_avg_scale"][rows]).lerp_(g, 1 - beta1)
            v = dequantise_unsigned(state["exp_avg_sq_codes"][rows], state["exp_avg_sq_scale"][rows])
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            update = m.div(v.sqrt().div_(root_correction).add_(eps)).view(-1)[: stop - start]
            piece = flat_p[start:stop]
            piece.mul_(1 - lr * decay).add_(update.to(piece.dtype), alpha=-step_size)
            state["exp_avg_codes"][rows], state["exp_avg_scale"][rows] = quantise_signed(m)
            state["exp_avg_sq_codes"][rows], state["exp_avg_sq_scale"][rows] = quantise_unsigned(v)


def make_optimizer(groups: list[dict], train) -> torch.optim.Optimizer:
    """The optimizer `train` (a TrainConfig) names, over the parameter groups."""
    common = dict(lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2), weight_decay=train.weight_decay)
    if train.optimizer == "adamw" and not train.optimizer_in_backward:
        # one kernel over all parameters (CPU and CUDA), no per-tensor Python loop or temporaries
        return torch.optim.AdamW(groups, **common, fused=True)
    optimizer = AdamW(groups, **common, moments="8bit" if train.optimizer == "adamw_8bit" else "fp32")
    optimizer.allocate_state()
    return optimizer


class StepInBackward:
    """Runs `optimizer.step_parameter(p)` from each parameter's post-accumulate-gradient hook and frees the
    gradient. Between `begin()` and `end()` only; `end()` returns the gradient norm of the step (of all the
    parameters' gradients, as clipping would have measured it). A non-finite gradient skips that parameter's
    update and marks the step (the parameters updated before it keep their update)."""

    def __init__(self, optimizer: AdamW, parameters):
        self.optimizer, self.active, self.squares, self.nonfinite = optimizer, False, 0.0, False
        self.handles = [p.register_post_accumulate_grad_hook(self.hook) for p in parameters if p.requires_grad]

    def hook(self, p: torch.Tensor) -> None:
        if not self.active:
            return
        grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
        square = float(torch.linalg.vector_norm(grad, dtype=torch.float32)) ** 2  # no gradient-sized temporary
        self.squares += square
        if math.isfinite(square):
            self.optimizer.step_parameter(p)
        else:
            self.nonfinite = True
        p.grad = None

    def begin(self) -> None:
        self.active, self.squares, self.nonfinite = True, 0.0, False

    def end(self) -> float:
        self.active = False
        return math.nan if self.nonfinite else math.sqrt(self.squares)
