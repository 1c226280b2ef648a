"""vLLM backend (CUDA only; install the `infer` extra in its own environment). Imported only when vLLM is installed.

One `LoRARequest` per annotator adapter on one engine (`enable_lora=True`); `tensor_parallel_size` spreads the model
over GPUs. Scoring asks for one greedy token restricted to the options (`SamplingParams(max_tokens=1,
allowed_token_ids=ids, logprobs=len(ids))`) on an engine that returns *processed logits* (`logprobs_mode=
"processed_logits"`, vLLM >= 0.10.2): after the allowed-token mask every other token is -inf, so the top len(ids)
entries are exactly the options, each with its raw logit, whatever its rank in the full vocabulary. That is what
the HF backend returns, and no option can silently become probability 0. `generate` requests no log-probabilities,
so the mode does not touch it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from capo.errors import DataError
from capo.generate.backends.base import Generation, check_dtype
from capo.generate.scoring import option_token_ids
from capo.precision import resolve_dtype


class VLLMBackend:
    def __init__(
        self,
        model: str,
        adapters: Mapping[str, str] | None = None,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        max_lora_rank: int = 64,
        max_logprobs: int = 20,
        seed: int = 0,
        **engine_kwargs,
    ) -> None:
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.model_id = str(model)
        self.adapter_paths = {str(name): str(path) for name, path in (adapters or {}).items()}
        self.max_logprobs = max_logprobs  # the most options one call may score
        lora = (
            {"enable_lora": True, "max_loras": len(self.adapter_paths), "max_lora_rank": max_lora_rank}
            if self.adapter_paths else {}
        )
        self.llm = LLM(
            model=self.model_id, dtype=resolve_dtype(check_dtype(dtype), "cuda"), tensor_parallel_size=tensor_parallel_size, max_logprobs=max_logprobs,
            logprobs_mode="processed_logits", seed=seed, **lora, **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        # LoRA ids must be distinct positive integers.
        self._requests = {
            name: LoRARequest(name, k + 1, path) for k, (name, path) in enumerate(self.adapter_paths.items())
        }

    def _request(self, adapter: str | None):
        if adapter is None:
            return None
        if adapter not in self._requests:
            known = ", ".join(self._requests) or "none"
            raise DataError(f"unknown adapter {adapter!r} (loaded: {known})", field="adapter")
        return self._requests[adapter]

    def _encode(self, prompts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []

    @staticmethod
    def _prompts(encoded: Sequence[Sequence[int]]) -> list:
        from vllm.inputs import TokensPrompt

        # Token ids, not text, so that vLLM adds no BOS of its own: the same tokens as the HF backend sees.
        return [TokensPrompt(prompt_token_ids=list(ids)) for ids in encoded]

    def generate(
        self, prompts: list[str], adapter: str | None = None, *, max_new_tokens: int = 128, temperature: float = 0.0,
        top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
    ) -> list[Generation]:
        from vllm import SamplingParams

        stop = [s for s in stop if s]  # vLLM leaves the stop string out of the text, as the HF backend does
        options = {"temperature": temperature, "max_tokens": max_new_tokens, "skip_special_tokens": True,
                   "stop": stop or None}
        if temperature:  # a seed per prompt (vLLM seeds each request): a repeated prompt is a new draw, and a
            # prompt's draw does not depend on how the engine batches it
            params = [SamplingParams(**options, top_p=top_p, seed=seed + k) for k in range(len(prompts))]
        else:
            params = SamplingParams(**options, seed=seed)
        outputs = self.llm.generate(self._prompts(self._encode(prompts)), params, lora_request=self._request(adapter), use_tqdm=False)
        return [
            Generation(text=out.outputs[0].text, prompt_tokens=len(out.prompt_token_ids),
                       generated_tokens=len(out.outputs[0].token_ids))
            for out in outputs
        ]

    def score_next_token(self, prompts: Sequence[str], options: Sequence[str], adapter: str | None = None) -> np.ndarray:
        """Raw next-token logits of the options after each prompt, shape (prompts, options), float32."""
        from vllm import SamplingParams

        unique = list(dict.fromkeys(prompts))  # identical prompts are computed once
        encoded = self._encode(unique)
        ids = option_token_ids(self.tokenizer, unique, options, encoded)  # the ids checked are the ids scored
        if len(options) > self.max_logprobs:
            raise DataError(f"{len(options)} options but the engine returns at most {self.max_logprobs} "
                            "log-probabilities per token; raise max_logprobs", field="options")
        if not unique:
            return np.zeros((0, len(options)), dtype=np.float32)
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=len(ids), allowed_token_ids=ids)
        outputs = self.llm.generate(self._prompts(encoded), params, lora_request=self._request(adapter), use_tqdm=False)
        scores = np.empty((len(unique), len(ids)), dtype=np.float32)
        for row, out in enumerate(outputs):
            top = out.outputs[0].logprobs[0]  # token id -> Logprob, for the first generated position
            missing = [option for option, token in zip(options, ids) if token not in top]
            if missing:  # cannot happen with the allowed-token mask and processed logits; never fill in a 0
                raise DataError(f"vLLM returned no score for option(s) {missing} (needs vLLM >= 0.10.2 with "
                                "logprobs_mode='processed_logits')", field="options")
            scores[row] = [top[token].logprob for token in ids]
        row_of = {prompt: k for k, prompt in enumerate(unique)}
        return scores[[row_of[prompt] for prompt in prompts]].reshape(len(prompts), len(ids))
