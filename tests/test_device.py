"""Every model on the accelerator: one device rule (`capo.precision.resolve_device`: an explicit device wins, then
accelerate's per-process device, then CUDA when available, else the CPU), used by every model loader, with the
inputs following the model. No GPU here: the rule is checked with CUDA faked, and the loaders with the rule faked to
answer the meta device (an accelerator stand-in torch supports everywhere); each model's parameters and buffers and
every tensor its forward (or `generate`) receives must be there. The forward is stopped at its first call."""

from __future__ import annotations

import pytest
import torch
from conftest import make_adapter

from capo import precision
from capo.errors import DataError

FAKE = torch.device("meta")
# Loading an adapter onto a meta model copies nothing (what the test wants); torch says so once per tensor.
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")


class Reached(Exception):
    """Raised by the spies at the model's first call: nothing runs on the fake device."""


def test_the_rule(monkeypatch):
    import accelerate.state

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(accelerate.state.PartialState, "_shared_state", {})  # no accelerate state yet
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_device() == precision.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.resolve_device() == torch.device("cuda")
    assert precision._device_type(None) == "cuda"  # dtype/bf16 "auto" decide for the same device
    monkeypatch.setenv("LOCAL_RANK", "1")  # accelerate launch / torchrun, before any state is set up
    assert precision.resolve_device() == torch.device("cuda", 1)
    for explicit in ("cpu", "cuda:3", torch.device("meta")):  # an explicit device wins
        assert precision.resolve_device(explicit) == torch.device(explicit)
    with pytest.raises(DataError, match=r"^field 'device': unknown device 'gpu'") as err:
        precision.resolve_device("gpu")
    assert "\n" not in str(err.value)

    state = type("PartialState", (), {"_shared_state": {"device": "set"}, "device": torch.device("cuda", 2)})
    monkeypatch.setattr(accelerate.state, "PartialState", state)  # set up by a launch or a Trainer: its device
    assert precision.resolve_device() == torch.device("cuda", 2)
    assert precision.resolve_device("cpu") == torch.device("cpu")


@pytest.fixture
def accelerator(monkeypatch):
    """The rule answers the fake accelerator where it would answer CUDA; an explicit device still wins."""
    rule = precision.resolve_device
    monkeypatch.setattr(precision, "resolve_device",
                        lambda device=None: FAKE if device in (None, "auto") else rule(device))
    return FAKE


@pytest.fixture(scope="module")
def adapter(corpus_lm, tmp_path_factory):
    return str(make_adapter(corpus_lm, tmp_path_factory.mktemp("device") / "A1", 1))


def on(model) -> set:
    return {t.device for t in [*model.parameters(), *model.buffers()]}


def stop_at_forward(model) -> list:
    """The devices of every tensor `model`'s next forward receives (recorded, then the call stops)."""
    seen: list = []

    def hook(module, args, kwargs):
        seen.extend(t.device for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor))
        raise Reached

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def score(scorer_call, model) -> set:
    seen = stop_at_forward(model)
    with pytest.raises(Reached):
        scorer_call()
    assert seen
    return set(seen)


@pytest.fixture(scope="module")
def data():
    from capo.evaluate.behaviour.judges import histories_and_heldout

    return histories_and_heldout("nli")


def test_explainers_backend_model_and_inputs(corpus_lm, adapter, accelerator, monkeypatch):
    from capo.generate.backends.hf import HFBackend

    backend = HFBackend(str(corpus_lm), {"A1": adapter}, dtype="float32")
    assert backend.device == accelerator and on(backend.model) == {accelerator}  # the adapter too
    prompt = backend.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                   add_generation_prompt=True)
    assert score(lambda: backend.score_next_token([prompt], ["A", "B"], "A1"), backend.model) == {accelerator}
    seen = []

    def generate(**inputs):
        seen.extend(t.device for t in inputs.values() if isinstance(t, torch.Tensor))
        raise Reached

    monkeypatch.setattr(backend.model, "generate", generate)
    with pytest.raises(Reached):
        backend.generate([prompt], "A1", max_new_tokens=2)
    assert seen and set(seen) == {accelerator}
    assert on(HFBackend(str(corpus_lm), dtype="float32", device="cpu").model) == {torch.device("cpu")}


def test_llm_judge(corpus_lm, data, accelerator):
    from capo.evaluate.behaviour.judges import llm_judge

    history, heldout, _ = data
    judge = llm_judge(str(corpus_lm), history)
    model = judge.score.__self__.model  # the shared HF scorer's model
    assert on(model) == {accelerator}
    assert score(lambda: judge.log_proba(heldout[:1]), model) == {accelerator}


def test_likelihood_attribution(corpus_lm, adapter, data, accelerator, monkeypatch):
    import torch.fx.experimental._config as fx_config
    from transformers import AutoTokenizer

    from capo.evaluate.behaviour.attribution import _load, score_annotations

    monkeypatch.setattr(fx_config, "meta_nonzero_assume_all_nonzero", True)  # `nonzero` on the fake device
    items, tokenizer = data[2][:1], AutoTokenizer.from_pretrained(corpus_lm)
    for model in (_load(str(corpus_lm), None, "float32"), _load(str(corpus_lm), adapter, "float32")):
        assert on(model) == {accelerator}
        assert score(lambda model=model: score_annotations(model, tokenizer, items), model) == {accelerator}


def test_label_scoring_and_jury(corpus_lm, adapter, data, accelerator):
    from capo.generate.labels import Explainers, LabelScorer

    scorer = LabelScorer(str(corpus_lm), Explainers("explainer", {"A1": adapter}))
    assert on(scorer.backend.model) == {accelerator}
    assert score(lambda: scorer.probabilities([(data[2][0], "A1")]), scorer.backend.model) == {accelerator}


@pytest.mark.parametrize("engine", ["prefix_cache", "backend"])
def test_mjd_scorer(corpus_lm, tmp_path, accelerator, engine):
    from capo.mjd.run import MJDScriptArguments, _load_scorer

    args = MJDScriptArguments(output_dir=str(tmp_path), model_name_or_path=str(corpus_lm), engine=engine)
    scorer, _ = _load_scorer(args)
    model = scorer.model  # HFScorer's or HFBackend's
    assert on(model) == {accelerator}
    assert score(lambda: scorer.score_next_token(["Answer:"], ["A", "B"]), model) == {accelerator}


def test_sentence_embeddings(monkeypatch, accelerator):
    import numpy as np
    import sentence_transformers

    from capo.evaluate.behaviour import patterns

    devices = []

    class Encoder:  # stands in for SentenceTransformer, which moves its inputs to its own device
        def __init__(self, path, device):
            devices.append(device)

        def encode(self, texts, **_):
            return np.zeros((len(texts), 3))

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Encoder)
    monkeypatch.setattr(patterns, "_EMBEDDED", {})
    patterns._encoder.cache_clear()
    try:
        patterns.embed(["a response"], model_path="stub")
        patterns.embed(["another"], model_path="stub", device="cpu")
    finally:
        patterns._encoder.cache_clear()
    assert devices == [str(accelerator), "cpu"]
