"""The interface every inference backend implements (Hugging Face transformers; vLLM when installed).

Prompts are already-rendered strings (the caller applies the tokenizer's chat template), so both backends see
exactly the same text. `adapter` names a LoRA adapter registered with the backend; None means the base model.
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
        """Next-token logits of each candidate (each a single token) after each prompt: shape (prompts, candidates)."""
        ...
