"""Training: one GRPO step's experience (log-probs, advantages, loss masks), micro-batches, the reference
model, the loop itself, iterative RL and the per-step metrics."""
