"""Distributions against human judgments: metrics (KL, JS, TVD, distance correlation), comparisons with the
baselines, cross-fitted calibration, and the explainer jury."""
