"""Stage 5, evaluation, by research question: `distributions/` (model and human judgment distributions compared:
metrics, baselines, calibration, the explainer jury), `behaviour/` (do the explainers write like their annotator?),
`finetune/` (soft-label encoder fine-tuning, the MJD papers' protocol); `figures` is shared by all three."""
