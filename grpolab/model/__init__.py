"""Models: loading (the embedded SmolLM2, tiny-random, any HF folder), scoring completions (log-probs,
entropies, shared prompts), attention on CPU, LoRA, precision and memory policy."""
