"""Generation and scoring: inference backends (HF, vLLM), the one next-token scoring engine, label probabilities
under the explainers, per-annotator explanation generation and the model explanations of the ACL 2025 paper."""
