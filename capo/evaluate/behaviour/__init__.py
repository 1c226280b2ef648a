"""Annotator behaviour: do the explainers write like their annotator? Pattern analysis, judges, imitation,
variability, likelihood attribution."""
