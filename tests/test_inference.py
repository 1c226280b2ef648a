"""The inference backends: HF scores equal an unpadded forward pass, batched greedy generation equals one-by-one
generation, adapters switch by name, errors are one line. The vLLM backend's requests and responses are checked
against a stand-in `vllm` module; the real engine runs only where vLLM is installed."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import make_adapter
from transformers import AutoModelForCausalLM, AutoTokenizer

from capo.data.formats.varierr import load_varierr
from capo.data.prompts import prompt_messages
from capo.errors import DataError
from capo.generate.backends import load_backend, vllm_available
from capo.generate.backends.hf import HFBackend
from capo.generate.scoring import option_token_ids

CANDIDATES = ["A", "B", "C"]


@pytest.fixture(scope="module")
def adapters(corpus_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: str(make_adapter(corpus_lm, root / name, seed)) for name, seed in (("A1", 1), ("A2", 2))}


@pytest.fixture(scope="module")
def prompts(corpus_lm):
    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    items = load_varierr()[:5]
    texts = [tokenizer.apply_chat_template(prompt_messages(item), tokenize=False, add_generation_prompt=True)
             for item in items]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert len(set(lengths)) > 1, "the prompts must differ in length, or padding is never exercised"
    return texts


def unpadded_last_logits(model, tokenizer, prompt: str, ids: list[int]) -> np.ndarray:
    input_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model(input_ids).logits[0, -1, ids].numpy()


def test_scores_equal_the_unpadded_forward_pass_in_fp32(corpus_lm, prompts):
    backend = HFBackend(str(corpus_lm), dtype="float32", batch_size=4)  # 5 prompts: a padded batch of 4, then 1
    scores = backend.score_next_token(prompts, CANDIDATES)
    assert scores.shape == (len(prompts), len(CANDIDATES)) and scores.dtype == np.float32
    model = AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32).eval()
    ids = option_token_ids(backend.tokenizer, prompts, CANDIDATES)
    expected = np.stack([unpadded_last_logits(model, backend.tokenizer, p, ids) for p in prompts])
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)
    # Duplicates are computed once and come back in input order.
    again = backend.score_next_token([prompts[2], prompts[0], prompts[2]], CANDIDATES)
    np.testing.assert_allclose(again, scores[[2, 0, 2]], atol=1e-5, rtol=0)


def test_batched_greedy_generation_equals_one_prompt_at_a_time(corpus_lm, prompts):
    batched = HFBackend(str(corpus_lm), dtype="float32", batch_size=8).generate(prompts, max_new_tokens=24)
    single = HFBackend(str(corpus_lm), dtype="float32", batch_size=1).generate(prompts, max_new_tokens=24)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.generated_tokens for g in batched] == [g.generated_tokens for g in single]
    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    for prompt, generation in zip(prompts, batched, strict=True):
        assert generation.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert 1 <= generation.generated_tokens <= 24
        assert generation.text.strip()


def test_adapters_switch_by_name_and_none_is_the_base_model(corpus_lm, adapters, prompts):
    from peft import PeftModel

    plain = HFBackend(str(corpus_lm), dtype="float32").score_next_token(prompts, CANDIDATES)
    backend = HFBackend(str(corpus_lm), adapters, dtype="float32")
    a1 = backend.score_next_token(prompts, CANDIDATES, adapter="A1")
    a2 = backend.score_next_token(prompts, CANDIDATES, adapter="A2")
    base = backend.score_next_token(prompts, CANDIDATES, adapter=None)
    a1_again = backend.score_next_token(prompts, CANDIDATES, adapter="A1")
    np.testing.assert_allclose(base, plain, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a1_again, a1, atol=1e-5, rtol=0)
    assert np.abs(a1 - plain).max() > 1e-2 and np.abs(a2 - plain).max() > 1e-2 and np.abs(a1 - a2).max() > 1e-2
    # Adapter A2 on the shared base gives what A2 alone on its own copy of the base gives.
    alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(corpus_lm), adapters["A2"]).eval()
    ids = option_token_ids(backend.tokenizer, prompts, CANDIDATES)
    expected = np.stack([unpadded_last_logits(alone, backend.tokenizer, p, ids) for p in prompts])
    np.testing.assert_allclose(a2, expected, atol=1e-4, rtol=0)
    # Generation follows the adapter too.
    texts = {name: [g.text for g in backend.generate(prompts[:2], adapter=name, max_new_tokens=12)]
             for name in ("A1", "A2", None)}
    assert texts["A1"] != texts[None] and texts["A2"] != texts[None]


def test_one_line_errors(corpus_lm, tmp_path):
    backend = HFBackend(str(corpus_lm))
    with pytest.raises(DataError, match="unknown adapter 'A9'"):
        backend.score_next_token(["x"], CANDIDATES, adapter="A9")
    with pytest.raises(DataError, match="not a single token") as err:
        backend.score_next_token(["x"], ["entailment and more"])
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="cannot load model") as err:
        HFBackend(str(tmp_path / "no-such-model"))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="cannot load adapter 'A1'") as err:
        HFBackend(str(corpus_lm), {"A1": str(tmp_path / "no-such-adapter")})
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="unknown backend 'onnx'"):
        load_backend("onnx", str(corpus_lm))
    assert backend.score_next_token([], CANDIDATES).shape == (0, 3)
    assert backend.generate([]) == []


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed here, so the missing-vLLM error cannot occur")
def test_vllm_missing_is_a_one_line_error(corpus_lm):
    with pytest.raises(DataError, match="needs the vllm package") as err:
        load_backend("vllm", str(corpus_lm))
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not vllm_available() or not torch.cuda.is_available(),
                    reason="vLLM is not installed (CUDA only; the 'infer' extra, in its own environment)")
def test_vllm_agrees_with_hf(corpus_lm, adapters, prompts):
    hf = HFBackend(str(corpus_lm), adapters, dtype="float32")
    vllm = load_backend("vllm", str(corpus_lm), adapters, dtype="float32", max_lora_rank=8, enforce_eager=True)
    for adapter in (None, "A1"):
        # Both return raw logits at the same in-context ids (vLLM: processed logits under the allowed-token mask).
        np.testing.assert_allclose(vllm.score_next_token(prompts, CANDIDATES, adapter),
                                   hf.score_next_token(prompts, CANDIDATES, adapter), atol=1e-3)
        assert [g.text for g in vllm.generate(prompts, adapter, max_new_tokens=8)] == \
            [g.text for g in hf.generate(prompts, adapter, max_new_tokens=8)]


class _StandInLLM:
    """Stands in for `vllm.LLM` (CUDA only, not installed here): records the engine arguments and every `generate`
    call; generation answers "answer K" with K+1 tokens for the K-th prompt, scoring answers each allowed token's
    processed logit as 1000 x prompt length + token id, listed in reverse order (so a mapping by position fails)."""

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.calls = kwargs, []
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["model"])

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        from types import SimpleNamespace as Out

        self.calls.append((prompts, params, lora_request))
        if not isinstance(params, list) and params.logprobs:  # a list: one SamplingParams a prompt (sampling)
            return [Out(outputs=[Out(logprobs=[{t: Out(logprob=1000.0 * len(p["prompt_token_ids"]) + t)
                                                for t in reversed(params.allowed_token_ids)}])]) for p in prompts]
        return [Out(prompt_token_ids=p["prompt_token_ids"], outputs=[Out(text=f"answer {k}", token_ids=[7] * (k + 1))])
                for k, p in enumerate(prompts)]


@pytest.fixture
def stand_in_vllm(monkeypatch):
    """A `vllm` package with LLM, SamplingParams, LoRARequest and TokensPrompt that record what they receive."""
    import importlib.machinery
    import types

    modules = {name: types.ModuleType(name) for name in ("vllm", "vllm.inputs", "vllm.lora", "vllm.lora.request")}
    modules["vllm"].__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # found by `vllm_available`
    modules["vllm"].LLM = _StandInLLM
    modules["vllm"].SamplingParams = lambda **kw: types.SimpleNamespace(**{"allowed_token_ids": None, "logprobs": None,
                                                                           **kw})
    modules["vllm.inputs"].TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    modules["vllm.lora.request"].LoRARequest = lambda name, lora_id, path: types.SimpleNamespace(
        name=name, id=lora_id, path=path)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    assert vllm_available()


def test_vllm_request_and_response_mapping(corpus_lm, prompts, stand_in_vllm):
    backend = load_backend("vllm", str(corpus_lm), {"A1": "/adapters/a1", "A2": "/adapters/a2"}, dtype="float16",
                           tensor_parallel_size=2, max_lora_rank=16, seed=3)
    engine = backend.llm
    assert engine.kwargs == {"model": str(corpus_lm), "dtype": "float16", "tensor_parallel_size": 2,
                             "max_logprobs": 20, "logprobs_mode": "processed_logits", "seed": 3, "enable_lora": True,
                             "max_loras": 2, "max_lora_rank": 16}
    encoded = [engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    # generation: prompts in order as token ids, one LoRA request per adapter with a stable id, settings passed on
    greedy = backend.generate(prompts, "A2", max_new_tokens=9)
    sent, params, lora = engine.calls[-1]
    assert [p["prompt_token_ids"] for p in sent] == encoded
    assert (lora.name, lora.id, lora.path) == ("A2", 2, "/adapters/a2")
    assert (params.temperature, params.max_tokens, params.seed, params.stop, params.skip_special_tokens) == \
        (0.0, 9, 0, None, True)
    assert [(g.text, g.prompt_tokens, g.generated_tokens) for g in greedy] == \
        [(f"answer {k}", len(ids), k + 1) for k, ids in enumerate(encoded)]
    backend.generate(prompts[:2], "A1", temperature=0.7, seed=5, stop=["\n\n", ""])
    _, params, lora = engine.calls[-1]  # sampling: one request a prompt, each seeded on its own (seed + k)
    assert (lora.name, lora.id) == ("A1", 1)
    assert [(p.temperature, p.seed, p.stop) for p in params] == [(0.7, 5, ["\n\n"]), (0.7, 6, ["\n\n"])]
    backend.generate(prompts[:1], "A2")
    assert engine.calls[-1][2] is engine.calls[0][2]  # the same request (and id) every time
    backend.generate(prompts[:1], None)
    assert engine.calls[-1][2] is None  # the base model
    with pytest.raises(DataError, match="unknown adapter 'A9' \\(loaded: A1, A2\\)"):
        backend.generate(prompts[:1], "A9")

    # scoring: one greedy token restricted to the options, a log-probability for every option, mapped back by id
    scores = backend.score_next_token(prompts + prompts[:1], CANDIDATES, "A1")
    sent, params, lora = engine.calls[-1]
    ids = option_token_ids(engine.tokenizer, prompts, CANDIDATES)
    assert [p["prompt_token_ids"] for p in sent] == encoded  # the repeated prompt is scored once
    assert (params.max_tokens, params.temperature, params.allowed_token_ids, params.logprobs) == \
        (1, 0.0, ids, len(CANDIDATES))
    assert lora.id == 1
    expected = [[1000.0 * len(row) + t for t in ids] for row in encoded + encoded[:1]]
    np.testing.assert_array_equal(scores, np.array(expected, dtype=np.float32))
    narrow = load_backend("vllm", str(corpus_lm), dtype="float16", max_logprobs=2)
    with pytest.raises(DataError, match="3 options but the engine returns at most 2"):
        narrow.score_next_token(prompts, CANDIDATES)
