"""vLLM backend (CUDA only; install the `infer` extra in its own environment). Imported only when vLLM is installed.

One `LoRARequest` per annotator adapter on one engine (`enable_lora=True`); `tensor_parallel_size` spreads the model
over GPUs. Scoring asks for one new token with the top-k log-probabilities (`SamplingParams(max_tokens=1,
logprobs=k)`) and reads the candidates from them: scores are log-probabilities, not logits (see
`capo.generate.backends.base`). A candidate outside the top k gets -inf (probability 0 after any softmax) and a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from capo.errors import DataError
from capo.generate.backends.base import Generation, single_token_ids


class VLLMBackend:
    def __init__(
        self,
        model: str,
        adapters: Mapping[str, str] | None = None,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        max_lora_rank: int = 64,
        score_top_k: int = 20,
        seed: int = 0,
        **engine_kwargs,
    ) -> None:
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.model_id = str(model)
        self.adapter_paths = {str(name): str(path) for name, path in (adapters or {}).items()}
        self.score_top_k = score_top_k
        lora = (
            {"enable_lora": True, "max_loras": len(self.adapter_paths), "max_lora_rank": max_lora_rank}
            if self.adapter_paths else {}
        )
        self.llm = LLM(
            model=self.model_id, dtype=dtype, tensor_parallel_size=tensor_parallel_size, max_logprobs=score_top_k,
            seed=seed, **lora, **engine_kwargs,
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

    def _prompts(self, prompts: list[str]) -> list:
        from vllm.inputs import TokensPrompt

        # Token ids, not text, so that vLLM adds no BOS of its own: the same tokens as the HF backend sees.
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        return [TokensPrompt(prompt_token_ids=ids) for ids in encoded]

    def candidate_ids(self, candidate_tokens: Sequence[str]) -> list[int]:
        """Token id of each candidate; each must be exactly one token, and all distinct."""
        return single_token_ids(self.tokenizer, candidate_tokens, self.model_id)

    def generate(
        self, prompts: list[str], adapter: str | None = None, *, max_new_tokens: int = 128, temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed, skip_special_tokens=True)
        outputs = self.llm.generate(self._prompts(prompts), params, lora_request=self._request(adapter), use_tqdm=False)
        return [
            Generation(text=out.outputs[0].text, prompt_tokens=len(out.prompt_token_ids),
                       generated_tokens=len(out.outputs[0].token_ids))
            for out in outputs
        ]

    def score_next_token(self, prompts: list[str], candidate_tokens: list[str], adapter: str | None = None) -> np.ndarray:
        """Next-token log-probabilities of the candidates, shape (prompts, candidates)."""
        from vllm import SamplingParams

        ids = self.candidate_ids(candidate_tokens)
        top_k = self.score_top_k  # the engine refuses more than its max_logprobs, which is set to this
        if len(ids) > top_k:
            raise DataError(f"{len(ids)} candidates but only the top {top_k} log-probabilities are read; "
                            "raise score_top_k", field="candidate_tokens")
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=top_k)
        unique = list(dict.fromkeys(prompts))
        outputs = self.llm.generate(self._prompts(unique), params, lora_request=self._request(adapter), use_tqdm=False)
        scores = np.full((len(unique), len(ids)), -np.inf, dtype=np.float32)
        missing = 0
        for row, out in enumerate(outputs):
            top = out.outputs[0].logprobs[0]  # token id -> Logprob, for the first generated position
            for col, token in enumerate(ids):
                if token in top:
                    scores[row, col] = top[token].logprob
                else:
                    missing += 1
        if missing:
            warnings.warn(f"{missing} candidate scores were outside the top {top_k} log-probabilities and set to -inf",
                          stacklevel=2)
        row_of = {prompt: k for k, prompt in enumerate(unique)}
        return scores[[row_of[prompt] for prompt in prompts]].reshape(len(prompts), len(ids))
