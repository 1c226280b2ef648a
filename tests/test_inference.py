"""The inference backends: HF scores equal an unpadded forward pass, batched greedy generation equals one-by-one
generation, adapters switch by name, errors are one line. vLLM tests run only where vLLM is installed."""

from __future__ import annotations

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
