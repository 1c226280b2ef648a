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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from capo.errors import DataError


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


def single_token_ids(tokenizer, candidate_tokens: Sequence[str], model_id: str) -> list[int]:
    """Token id of each candidate; each must be exactly one token for `tokenizer`, and all distinct."""
    ids = []
    for candidate in candidate_tokens:
        pieces = tokenizer.encode(candidate, add_special_tokens=False)
        if len(pieces) != 1:
            raise DataError(f"candidate {candidate!r} is {len(pieces)} tokens for this tokenizer, not one",
                            path=model_id, field="candidate_tokens")
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise DataError(f"candidates {list(candidate_tokens)!r} share a token id", path=model_id, field="candidate_tokens")
    return ids
