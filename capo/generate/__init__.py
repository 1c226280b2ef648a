"""Stage 3, generation: inference backends (HF, vLLM), per-annotator explanation generation and the model
explanations of the ACL 2025 paper."""
