"""Rollouts: prompts -> G completions each -> rewards -> a padded batch; dynamic sampling; greedy evaluation."""
