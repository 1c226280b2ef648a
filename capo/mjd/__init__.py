"""Model judgment distributions: prompts, option- and explanation-order averaging, scoring, sharded runs."""
