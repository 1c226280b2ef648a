"""The one next-token scoring interface (`capo.generate.scoring`): the option ids scored are the ids checked in
context, on every path (HF scorer with and without prefix reuse, HF backend, vLLM backend glue) and on two tokenizers
that split letters differently; scores equal the logits of a plain unpadded forward pass, under a LoRA adapter too;
the tokenizer's padding side changes nothing; the prefix tree is exact; scores equal `generate`'s step-0 scores."""

from __future__ import annotations

import importlib.util
import random
import sys
import types

import numpy as np
import pytest
import torch
from conftest import ROOT
from transformers import AutoModelForCausalLM, AutoTokenizer

from capo.data.formats.mjd_files import load_nli341
from capo.data.prompts import render_chat
from capo.errors import DataError
from capo.generate.backends.hf import HFBackend
from capo.generate.scoring import HFScorer, build_prefix_tree, option_token_ids
from capo.mjd.estimate import MJDSettings, item_explanations, prompt_specs, user_message
from tests.test_inference import make_adapter

OPTION_SETS = (("A", "B", "C"), ("A", "B", "C", "D"), ("1", "2", "3", "4", "5"))  # MJD, judge, Likert


def mjd_messages(items: int = 2) -> list[str]:
    """MJD user messages (serial, 2 comments): many prompts that share long prefixes, all ending in 'Answer:'."""
    chosen = load_nli341()[:items]
    explanations = item_explanations(chosen, "human")
    settings = MJDSettings(mode="serial", k=2, max_orders=4)
    return [user_message(item, explanations[item.id], spec) for item in chosen
            for spec in prompt_specs(item.id, len(explanations[item.id]), settings)]


def in_context_ids(tokenizer, prompt: str, options) -> list[int]:
    """Independently of the library: the last token of prompt + option."""
    return [tokenizer(prompt + o, add_special_tokens=False)["input_ids"][-1] for o in options]


def bare_ids(tokenizer, options) -> list[int]:
    return [tokenizer(o, add_special_tokens=False)["input_ids"][0] for o in options]


def forward_logits(model, tokenizer, prompts, ids) -> np.ndarray:
    """Logits at the last position of a plain, unpadded, one-prompt-at-a-time forward pass."""
    rows = []
    with torch.inference_mode():
        for prompt in prompts:
            input_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            rows.append(model(input_ids).logits[0, -1, ids].float().numpy())
    return np.stack(rows)


@pytest.fixture(scope="module")
def lm(corpus_lm):
    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    model = AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def spm_lm(corpus_lm, tmp_path_factory):
    """The corpus LM's weights with a SentencePiece-style tokenizer (Metaspace BPE): a bare "A" is "▁A", while the
    "A" after "Answer:" is the plain "A" piece, another id. Saved like a hub model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [f"{item.inputs['premise']} {item.inputs['hypothesis']}" for item in load_nli341()]
    texts += ["Answer: A", "Answer: B", "Answer: C, D or E. 1 2 3 4 5"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, special_tokens=["<pad>", "<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    model = AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32)
    assert len(tokenizer) <= model.config.vocab_size
    path = tmp_path_factory.mktemp("spm-lm") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapters(corpus_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring-adapters")
    return {name: str(make_adapter(corpus_lm, root / name, seed)) for name, seed in (("A1", 1), ("A2", 2))}


def test_option_ids_are_checked_in_context_on_two_tokenizers(lm, spm_lm):
    _, byte_level = lm
    spm = AutoTokenizer.from_pretrained(spm_lm)
    messages = mjd_messages()
    for tokenizer, prompts in ((byte_level, [render_chat(byte_level, m) for m in messages]), (spm, messages)):
        for options in OPTION_SETS:
            ids = option_token_ids(tokenizer, prompts, options)
            assert ids == in_context_ids(tokenizer, prompts[0], options) and len(set(ids)) == len(options)
    # The two tokenizers split letters differently: byte-level BPE has one "A" everywhere, SentencePiece-style has a
    # bare "▁A" that is not the "A" read at the answer position (scoring the bare id would score the wrong token).
    assert option_token_ids(byte_level, [render_chat(byte_level, messages[0])], "ABC") == bare_ids(byte_level, "ABC")
    assert not set(option_token_ids(spm, messages[:1], "ABC")) & set(bare_ids(spm, "ABC"))

    for tokenizer, prompt in ((byte_level, "Answer:"), (spm, "Answer:")):
        with pytest.raises(DataError, match="map to the same token ids|repeat"):
            option_token_ids(tokenizer, [prompt], ["A", "B", "A"])
        with pytest.raises(DataError, match="'Contradictorily' is not a single token after prompt 1") as err:
            option_token_ids(tokenizer, [prompt], ["A", "B", "Contradictorily"])
        assert "\n" not in str(err.value)
    # A trailing space merges with the letter (" A" is one byte-level token): refused, not scored at the wrong id,
    # with or without a chat template before it (there only the text after the last special token is re-checked).
    with pytest.raises(DataError, match="'A' is not a single token after prompt 2"):
        option_token_ids(byte_level, ["Answer:", "Answer: "], "ABC")
    chat = [render_chat(byte_level, m) for m in messages[:3]]
    with pytest.raises(DataError, match="'A' is not a single token after prompt 3"):
        option_token_ids(byte_level, chat[:2] + [chat[2] + "Answer: "], "ABC")
    assert option_token_ids(byte_level, chat[:2] + [chat[2] + "Answer:"], "ABC") == bare_ids(byte_level, "ABC")


def test_every_path_scores_the_checked_ids(spm_lm):
    tokenizer = AutoTokenizer.from_pretrained(spm_lm)
    model = AutoModelForCausalLM.from_pretrained(spm_lm, dtype=torch.float32).eval()
    backend = HFBackend(str(spm_lm), dtype="float32", batch_size=4, device="cpu")
    prompts = mjd_messages()
    paths = {
        "HFScorer, prefix reuse": HFScorer(model, tokenizer, batch_size=8, min_shared_tokens=1),
        "HFScorer, no prefix reuse": HFScorer(model, tokenizer, batch_size=8, min_shared_tokens=None),
        "HFBackend.score_next_token": backend,
    }
    for options in OPTION_SETS:
        expected = forward_logits(model, tokenizer, prompts, in_context_ids(tokenizer, prompts[0], options))
        wrong = forward_logits(model, tokenizer, prompts, bare_ids(tokenizer, options))
        assert np.abs(expected - wrong).max() > 1e-2  # so a path scoring the bare ids would fail below
        for name, scorer in paths.items():
            scores = scorer.score_next_token(prompts, options)
            assert scores.shape == (len(prompts), len(options)) and scores.dtype == np.float32, name
            np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0, err_msg=name)
    assert backend.scorer.option_ids == in_context_ids(tokenizer, prompts[0], OPTION_SETS[-1])
    reuse = paths["HFScorer, prefix reuse"].stats
    assert reuse["computed_tokens"] < reuse["prompt_tokens"] / 2  # the prefix tree really shared prefixes


def test_scores_under_a_lora_adapter_equal_a_plain_forward_pass(corpus_lm, adapters):
    from peft import PeftModel

    backend = HFBackend(str(corpus_lm), adapters, dtype="float32", batch_size=4, device="cpu")
    tokenizer = backend.tokenizer
    prompts = [render_chat(tokenizer, m) for m in mjd_messages()]
    reuse = HFScorer(backend.model, tokenizer, batch_size=8, min_shared_tokens=1)  # on the backend's PeftModel
    base = AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32).eval()
    for options in OPTION_SETS[:2]:
        ids = option_token_ids(tokenizer, prompts, options)
        for adapter in ("A1", "A2", None):
            if adapter is None:
                model = base
            else:  # the adapter alone on its own copy of the base model
                model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(corpus_lm), adapters[adapter])
            expected = forward_logits(model.eval(), tokenizer, prompts, ids)
            for name, scorer in (("backend", backend), ("HFScorer with prefix reuse", reuse)):
                np.testing.assert_allclose(scorer.score_next_token(prompts, options, adapter), expected, atol=1e-4,
                                           rtol=0, err_msg=f"{name}, adapter {adapter}")
    a1, a2 = (backend.score_next_token(prompts, "ABC", name) for name in ("A1", "A2"))
    assert np.abs(a1 - a2).max() > 1e-2  # the adapters really differ
    with pytest.raises(DataError, match=r"unknown adapter 'A9' \(loaded: A1, A2\)"):
        reuse.score_next_token(prompts, "ABC", "A9")
    with pytest.raises(DataError, match=r"unknown adapter 'A1' \(loaded: none\)"):
        HFScorer(base, tokenizer).score_next_token(prompts, "ABC", "A1")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_mjd_throughput", ROOT / "bench/mjd_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_right_padding_tokenizer_gives_the_same_scores(lm, corpus_lm):
    model, _ = lm
    backend = HFBackend(str(corpus_lm), dtype="float32", batch_size=4, device="cpu")
    prompts = [render_chat(backend.tokenizer, m) for m in mjd_messages(1)][::3]
    lengths = {len(backend.tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 1, "prompts of one length would never be padded"
    ids = option_token_ids(backend.tokenizer, prompts, "ABC")
    expected = forward_logits(model, backend.tokenizer, prompts, ids)
    assert backend.tokenizer.padding_side == "left"  # the corpus LM ships left padding; flip it
    left_generation = [g.text for g in backend.generate(prompts, max_new_tokens=6)]
    backend.tokenizer.padding_side = "right"
    scorer = HFScorer(model, backend.tokenizer, batch_size=4, min_shared_tokens=None)
    for name, scores in (("backend", backend.score_next_token(prompts, "ABC")),
                         ("HFScorer", scorer.score_next_token(prompts, "ABC"))):
        np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0, err_msg=name)
    assert [g.text for g in backend.generate(prompts, max_new_tokens=6)] == left_generation
    # the benchmark's seed method (batched `generate`, step-0 scores) pads on the left by itself too
    seed_scores, _ = _bench().seed_method(model, backend.tokenizer, prompts, ids, 1, 4, torch)
    np.testing.assert_allclose(seed_scores, expected, atol=1e-4, rtol=0)


def test_prefix_tree_covers_every_sequence_exactly():
    rng = random.Random(1)
    stems = [[rng.randrange(5) for _ in range(rng.randrange(1, 6))] for _ in range(6)]
    seqs = list({tuple(a + b + c) for a in stems for b in stems[:3] for c in stems[:2] if a + b + c})

    def walk(node, prefix, rebuilt):
        tokens = prefix + node.tokens
        for end in node.ends:
            rebuilt[end] = tuple(tokens)
        for child in node.children:
            walk(child, tokens, rebuilt)
        return rebuilt

    for min_shared in (1, 3, 10**9):
        rebuilt = {}
        for root in build_prefix_tree(seqs, min_shared):
            walk(root, [], rebuilt)
        assert rebuilt == dict(enumerate(seqs))
    assert all(not r.children for r in build_prefix_tree(seqs, 10**9))  # no reuse: every prompt whole


def _generate_step0(model, tokenizer, prompts, letter_ids, batch_size=20):
    """The seed method: greedy `generate(..., output_scores=True)` in batches of 20, step-0 scores of the letters."""
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], add_special_tokens=False, padding=True,
                          padding_side="left", return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=1, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        rows.append(out.scores[0][:, letter_ids].float().numpy())
    return np.concatenate(rows)


@pytest.mark.slow
def test_scores_equal_generate_step0_in_fp32(lm, corpus_lm):
    from capo.mjd.estimate import OPTION_LETTERS, estimate_mjds, normalise

    model, tokenizer = lm
    items = load_nli341()[:3]
    explanations = item_explanations(items, "human")
    settings = MJDSettings(mode="serial", k=2, normalisation="prob")
    render = lambda content: render_chat(tokenizer, content)
    prompts = [render(user_message(item, explanations[item.id], spec))
               for item in items for spec in prompt_specs(item.id, 4, settings)]
    letter_ids = option_token_ids(tokenizer, prompts, OPTION_LETTERS)
    reference = _generate_step0(model, tokenizer, prompts, letter_ids)
    ref_p = normalise(reference, "prob")

    scorers = {
        "prefix reuse (every shared segment)": HFScorer(model, tokenizer, batch_size=64, min_shared_tokens=1,
                                                        max_batch_tokens=300),
        "prefix reuse (>= 16 tokens)": HFScorer(model, tokenizer, batch_size=16, min_shared_tokens=16),
        "plain batched forward": HFScorer(model, tokenizer, batch_size=16, min_shared_tokens=None),
        "backend (capo.generate.backends.hf)": HFBackend(str(corpus_lm), dtype="float32", batch_size=16),
    }
    for name, scorer in scorers.items():
        scores = scorer.score_next_token(prompts, OPTION_LETTERS)
        assert np.abs(normalise(scores, "prob") - ref_p).max() <= 1e-4, name
        assert np.abs(normalise(scores, "p_softmax") - normalise(reference, "p_softmax")).max() <= 1e-4, name
    reuse = scorers["prefix reuse (every shared segment)"].stats
    assert reuse["computed_tokens"] < reuse["prompt_tokens"] / 3  # the prefixes really were shared
    # identical prompts are computed once and get identical scores
    repeated = scorers["prefix reuse (>= 16 tokens)"].score_next_token(prompts + prompts[:5], OPTION_LETTERS)
    assert scorers["prefix reuse (>= 16 tokens)"].stats["distinct_prompts"] == len(prompts)
    assert np.array_equal(repeated[-5:], repeated[:5])

    # and through the estimator: distributions equal those from the generate scores
    results = estimate_mjds(items, explanations, scorers["prefix reuse (>= 16 tokens)"], settings, render)

    class Replay:
        def score_next_token(self, texts, options, adapter=None):
            assert texts == prompts and tuple(options) == OPTION_LETTERS
            return reference

    expected = estimate_mjds(items, explanations, Replay(), settings, render)
    assert np.abs(np.array([r.distribution for r in results]) - [r.distribution for r in expected]).max() <= 1e-4


class _ProcessedLogitsLLM:
    """Stands in for `vllm.LLM` (not installable here) with the documented semantics the backend relies on:
    `logprobs_mode="processed_logits"`, greedy, one token: the top-`logprobs` entries of the logits after the
    `allowed_token_ids` mask (computed with the HF model), keyed by token id."""

    def __init__(self, model) -> None:
        self.model, self.requests = model, []

    def generate(self, prompts, params, lora_request=None, use_tqdm=False):
        self.requests.append(params)
        outputs = []
        with torch.inference_mode():
            for prompt in prompts:
                logits = self.model(torch.tensor([prompt["prompt_token_ids"]])).logits[0, -1].float()
                if params.allowed_token_ids is not None:
                    masked = torch.full_like(logits, -float("inf"))
                    masked[params.allowed_token_ids] = logits[params.allowed_token_ids]
                    logits = masked
                values, ids = logits.topk(params.logprobs)
                top = {int(i): types.SimpleNamespace(logprob=float(v)) for v, i in zip(values, ids)}
                outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[top])]))
        return outputs


def test_vllm_backend_scores_the_checked_ids_of_every_option(spm_lm, monkeypatch):
    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**{"allowed_token_ids": None, **kw})
    fake.inputs = types.ModuleType("vllm.inputs")
    fake.inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.inputs", fake.inputs)
    from capo.generate.backends.vllm import VLLMBackend

    tokenizer = AutoTokenizer.from_pretrained(spm_lm)
    model = AutoModelForCausalLM.from_pretrained(spm_lm, dtype=torch.float32).eval()
    backend = VLLMBackend.__new__(VLLMBackend)  # the engine itself needs vLLM and CUDA
    backend.model_id, backend.tokenizer, backend.max_logprobs = str(spm_lm), tokenizer, 4
    backend.llm, backend._requests = _ProcessedLogitsLLM(model), {}
    prompts = mjd_messages(1)[:6]
    for options in OPTION_SETS[:2]:
        scores = backend.score_next_token(prompts + prompts[:2], options)
        ids = in_context_ids(tokenizer, prompts[0], options)
        assert backend.llm.requests[-1].allowed_token_ids == ids and backend.llm.requests[-1].logprobs == len(ids)
        np.testing.assert_allclose(scores, forward_logits(model, tokenizer, prompts + prompts[:2], ids), atol=1e-4)
    with pytest.raises(DataError, match="5 options but the engine returns at most 4"):
        backend.score_next_token(prompts, OPTION_SETS[2])
    # an engine that ignored the mask (plain top-k over the vocabulary) would drop options: an error, never a 0
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**{**kw, "allowed_token_ids": None})
    with pytest.raises(DataError, match="returned no score for option"):
        backend.score_next_token(prompts, ["1", "2", "3", "4"])
