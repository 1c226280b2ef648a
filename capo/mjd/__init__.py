"""Stage 4, model judgment distributions: prompts, option- and explanation-order averaging, scoring, runs."""
