"""The interface every inference backend implements (Hugging Face transformers; vLLM when installed).

Prompts are already-rendered strings (the caller applies the tokenizer's chat template), so both backends see
exactly the same text; they are tokenized without adding special tokens (the template already holds them).
`adapter` names a LoRA adapter registered with the backend; None means the base model.

`score_next_token` is the one next-token scoring interface (`capo.generate.scoring.NextTokenScorer`): both
backends return the raw next-token *logits* of the options, at the token ids `capo.generate.scoring.option_token_ids`
checked in context, so scores agree across backends up to numerics, under every normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from capo.errors import DataError

DTYPES = ("auto", "float32", "bfloat16", "float16")  # every loader's `dtype`; auto: `capo.precision` (hardware)


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise DataError(f"unknown dtype {dtype!r} (valid: {', '.join(DTYPES)})", field="dtype")
    return dtype


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest stop string (excluded), as vLLM returns it; unchanged without one."""
    ends = [text.find(s) for s in stop if s and s in text]
    return text[: min(ends)] if ends else text


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
        top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
    ) -> list[Generation]:
        """One continuation per prompt, in input order (greedy when temperature is 0, else sampled at `temperature`
        with nucleus `top_p`, reproducibly for the same `seed`, prompts and batch size: a repeated prompt is drawn
        again), ending before the first of the `stop` strings."""
        ...

    def score_next_token(self, prompts: Sequence[str], options: Sequence[str], adapter: str | None = None) -> np.ndarray:
        """Raw next-token logits of each single-token option after each prompt: shape (prompts, options)."""
        ...
