"""Stage 5, evaluation: metrics, distribution files and baselines, likelihood attribution, soft-label fine-tuning."""
