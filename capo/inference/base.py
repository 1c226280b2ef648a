"""The interface every inference backend implements (Hugging Face transformers; vLLM when installed).

Prompts are already-rendered strings (the caller applies the tokenizer's chat template), so both backends see
exactly the same text; they are tokenized without adding special tokens (the template already holds them).
`adapter` names a LoRA adapter registered with the backend; None means the base model.

Scores differ between backends by a per-prompt constant: the HF backend returns raw next-token *logits*, vLLM
returns next-token *log-probabilities* (logits minus the log-sum-exp over the vocabulary). A softmax over the
candidates is shift-invariant, so softmax-based normalisations (`p_softmax` at any temperature, probabilities
renormalised over the candidates) agree across backends; `p_norm` (scores divided by their sum) does not, so
compare it within one backend only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Generation:
    text: str  # the generated continuation only, special tokens removed
    prompt_tokens: int
    generated_tokens: int


@runtime_checkable
class Backend(Protocol):
    model_id: str

    def generate(
        self, prompts: list[str], adapter: str | None = None, *, max_new_tokens: int = 128, temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """One continuation per prompt, in input order (greedy when temperature is 0)."""
        ...

    def score_next_token(self, prompts: list[str], candidate_tokens: list[str], adapter: str | None = None) -> np.ndarray:
        """Next-token scores of each candidate (each a single token) after each prompt: shape (prompts, candidates).

        HF: raw logits; vLLM: log-probabilities (see the module docstring).
        """
        ...
