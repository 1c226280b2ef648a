"""Models the project builds itself, offline: the corpus LM for tests and CPU studies, and pretrained models
converted from pip packages (GGUF -> a transformers folder)."""
