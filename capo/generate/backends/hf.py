"""Hugging Face transformers backend: batched, left-padded, length-sorted; LoRA adapters switched by name.

Several annotators' adapters sit on one base model (`PeftModel.load_adapter` / `set_adapter`); `adapter=None` runs
the base model with the adapters disabled. `score_next_token` is `capo.generate.scoring.HFScorer` on this model: one
forward pass per distinct prompt that computes only the last position's logits (no prefix reuse unless
`min_shared_tokens` is set). Every batch is padded on the left here, whatever the tokenizer's `padding_side`.
The model goes where `capo.precision.resolve_device` says (an explicit `device`, else each `accelerate launch`
process's own device, else CUDA when available, else the CPU), and every input follows it; sharding the work is the
caller's job (see `capo.generate.explanations`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from capo.errors import DataError
from capo.generate.backends.base import Generation, check_dtype, cut_at_stop
from capo.generate.scoring import HFScorer, active_adapter


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def load_causal_lm(model: str, dtype: str = "auto", device=None):
    """(model, tokenizer) from a hub id or local folder, in `dtype` (`capo.generate.backends.base.DTYPES`; `auto` as
    `capo.precision` resolves it for the device, not as stored), in eval mode on `device` (None or "auto":
    `capo.precision.resolve_device`); bad input is one line."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capo.precision import resolve_device, resolve_dtype

    device = resolve_device(device)
    dtype = resolve_dtype(check_dtype(dtype), device)  # auto: bf16 where the device computes it natively, else fp32
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot load model: {_one_line(err)}", path=str(model)) from None
    return lm.to(device).eval(), tokenizer


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
        min_shared_tokens: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}", field="batch_size")
        self.model_id = str(model)
        self.batch_size = batch_size
        self.adapter_paths = {str(name): str(path) for name, path in (adapters or {}).items()}
        base, self.tokenizer = load_causal_lm(self.model_id, dtype, device)
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
        self.device = base.device  # where load_causal_lm put the base model; every input follows it
        self.model = base.to(self.device).eval()  # the adapters too
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self._eos_ids = set(eos) | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())
        self.scorer = HFScorer(self.model, self.tokenizer, batch_size=batch_size, min_shared_tokens=min_shared_tokens,
                               max_batch_tokens=max_batch_tokens)

    # --- helpers -------------------------------------------------------------------------------------------------

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
        # Left padding, set here rather than trusted from the tokenizer: generation continues from the last column.
        batch = self.tokenizer.pad({"input_ids": rows}, padding=True, padding_side="left", return_tensors="pt")
        return {key: value.to(self.device) for key, value in batch.items()}

    def _generated_length(self, row: list[int]) -> int:
        """Tokens up to and including the first end-of-sequence token; without one, up to the padding that follows a
        stop string (the rest is padding)."""
        for position, token in enumerate(row):
            if token in self._eos_ids:
                return position + 1
        length = len(row)
        while length and row[length - 1] == self.tokenizer.pad_token_id:
            length -= 1
        return length

    # --- the Backend interface -----------------------------------------------------------------------------------

    def generate(
        self, prompts: list[str], adapter: str | None = None, *, max_new_tokens: int = 128, temperature: float = 0.0,
        top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
    ) -> list[Generation]:
        import torch

        encoded = self._encode(prompts)
        results: list[Generation | None] = [None] * len(prompts)
        # Sampling is transformers' own; top_k=0 lifts the default top-50 cut (as vLLM: the full distribution).
        sampling = ({"do_sample": False} if temperature == 0 else
                    {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0})
        stop = [s for s in stop if s]
        if stop:  # ends a row's decoding early; the text is cut at the stop string below
            sampling.update(stop_strings=stop, tokenizer=self.tokenizer)
        if temperature:  # once per call, not per batch: a prompt repeated in another batch is a new draw
            torch.manual_seed(seed)  # reproducible for the same prompts and batch size
        with torch.inference_mode(), active_adapter(self.model, adapter):
            for batch in self._batches(encoded):
                inputs = self._pad([encoded[i] for i in batch])
                output = self.model.generate(
                    **inputs, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
                )
                new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
                for index, row in zip(batch, new_tokens, strict=True):
                    length = self._generated_length(row)
                    text = cut_at_stop(self.tokenizer.decode(row[:length], skip_special_tokens=True), stop)
                    results[index] = Generation(text=text, prompt_tokens=len(encoded[index]), generated_tokens=length)
        return results  # type: ignore[return-value]

    def score_next_token(self, prompts: Sequence[str], options: Sequence[str], adapter: str | None = None) -> np.ndarray:
        """Raw next-token logits of the options after each prompt, shape (prompts, options), float32."""
        return self.scorer.score_next_token(prompts, options, adapter)
