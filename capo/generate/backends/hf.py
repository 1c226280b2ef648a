"""Hugging Face transformers backend: batched, left-padded, length-sorted; LoRA adapters switched by name.

Several annotators' adapters sit on one base model (`PeftModel.load_adapter` / `set_adapter`); `adapter=None` runs
the base model with the adapters disabled. `score_next_token` is one forward pass per prompt that computes only the
last position's logits; identical prompts are computed once. Under `accelerate launch` each process uses its own
device (`PartialState().device`); sharding the work is the caller's job (see `capo.generate.explanations`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from capo.errors import DataError
from capo.generate.backends.base import Generation, single_token_ids

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


class HFBackend:
    """`model` and adapter paths are hub ids or local folders (`from_pretrained` either way)."""

    def __init__(
        self,
        model: str,
        adapters: Mapping[str, str] | None = None,
        *,
        dtype: str = "auto",
        batch_size: int = 16,
        device: str | None = None,
    ) -> None:
        import torch
        from accelerate import PartialState
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in DTYPES:
            raise DataError(f"unknown dtype {dtype!r} (valid: {', '.join(DTYPES)})", field="dtype")
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}", field="batch_size")
        self.model_id = str(model)
        self.batch_size = batch_size
        self.adapter_paths = {str(name): str(path) for name, path in (adapters or {}).items()}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_id)
            base = AutoModelForCausalLM.from_pretrained(
                self.model_id, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
            )
        except (OSError, ValueError) as err:
            raise DataError(f"cannot load model: {_one_line(err)}", path=self.model_id) from None
        self.tokenizer.padding_side = "left"  # the last position is the one generation and scoring read
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.adapter_paths:
            from peft import PeftModel

            for k, (name, path) in enumerate(self.adapter_paths.items()):
                try:
                    if k == 0:
                        base = PeftModel.from_pretrained(base, path, adapter_name=name)
                    else:
                        base.load_adapter(path, adapter_name=name)
                except (OSError, ValueError) as err:
                    raise DataError(f"cannot load adapter {name!r}: {_one_line(err)}", path=path) from None
        self.device = torch.device(device) if device else PartialState().device
        self.model = base.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self._eos_ids = set(eos) | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())

    # --- helpers -------------------------------------------------------------------------------------------------

    @contextmanager
    def _active(self, adapter: str | None) -> Iterator[None]:
        if adapter is None:
            if self.adapter_paths:
                with self.model.disable_adapter():
                    yield
            else:
                yield
            return
        if adapter not in self.adapter_paths:
            known = ", ".join(self.adapter_paths) or "none"
            raise DataError(f"unknown adapter {adapter!r} (loaded: {known})", field="adapter")
        self.model.set_adapter(adapter, inference_mode=True)
        yield

    def _encode(self, prompts: Sequence[str]) -> list[list[int]]:
        if not prompts:
            return []
        # The chat template already holds any BOS/special tokens, so add none here.
        return self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]

    def _batches(self, encoded: list[list[int]]) -> Iterator[list[int]]:
        """Indices in batches of similar length (longest first, so an out-of-memory shows up at once)."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def _pad(self, rows: list[list[int]]) -> dict:
        batch = self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
        return {key: value.to(self.device) for key, value in batch.items()}

    def candidate_ids(self, candidate_tokens: Sequence[str]) -> list[int]:
        """Token id of each candidate; each must be exactly one token, and all distinct."""
        return single_token_ids(self.tokenizer, candidate_tokens, self.model_id)

    def _generated_length(self, row: list[int]) -> int:
        """Tokens up to and including the first end-of-sequence token (the rest is padding)."""
        for position, token in enumerate(row):
            if token in self._eos_ids:
                return position + 1
        return len(row)

    # --- the Backend interface -----------------------------------------------------------------------------------

    def generate(
        self, prompts: list[str], adapter: str | None = None, *, max_new_tokens: int = 128, temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        import torch

        encoded = self._encode(prompts)
        results: list[Generation | None] = [None] * len(prompts)
        sampling = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature}
        with torch.inference_mode(), self._active(adapter):
            for batch in self._batches(encoded):
                inputs = self._pad([encoded[i] for i in batch])
                if temperature:
                    torch.manual_seed(seed)  # reproducible for the same prompts and batch size
                output = self.model.generate(
                    **inputs, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
                )
                new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
                for index, row in zip(batch, new_tokens, strict=True):
                    length = self._generated_length(row)
                    text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
                    results[index] = Generation(text=text, prompt_tokens=len(encoded[index]), generated_tokens=length)
        return results  # type: ignore[return-value]

    def score_next_token(self, prompts: list[str], candidate_tokens: list[str], adapter: str | None = None) -> np.ndarray:
        """Raw next-token logits of the candidates after each prompt, shape (prompts, candidates), float32."""
        import torch

        ids = self.candidate_ids(candidate_tokens)
        unique = list(dict.fromkeys(prompts))  # identical prompts are computed once
        encoded = self._encode(unique)
        scores = np.zeros((len(unique), len(ids)), dtype=np.float32)
        with torch.inference_mode(), self._active(adapter):
            for batch in self._batches(encoded):
                inputs = self._pad([encoded[i] for i in batch])
                # Left padding: positions must count real tokens only, as `generate` does.
                position_ids = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
                logits = self.model(**inputs, position_ids=position_ids, logits_to_keep=1, use_cache=False).logits
                scores[batch] = logits[:, -1, ids].float().cpu().numpy()
        row_of = {prompt: k for k, prompt in enumerate(unique)}
        return scores[[row_of[prompt] for prompt in prompts]].reshape(len(prompts), len(ids))
