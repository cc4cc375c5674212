"""The math of GRPO and its variants: pure functions over tensors, no model or distributed code."""
