"""The annotator-embedding encoder (capo.lewidi.annotator_encoder) and the stack (capo.lewidi.stack): the ordinal
head keeps its cut-points ordered and its distributions whole, the decisions minimise their measures on cases worked
by hand, the stack's weight is chosen on train only, and both predictors run end to end through the recipe, a
label-less split file included."""

import itertools
import json

import numpy as np
import pytest
from conftest import load_script
from test_perspectivist import NAMES, PAR_HABITS, VEN_HABITS, _split

from capo.data.formats.lewidi import PAR_LABELS, VEN_LABELS, read_lewidi
from capo.errors import DataError
from capo.lewidi.annotator_encoder import (
    EncoderAnnArguments,
    build_model,
    ordered_cuts,
    ordinal_log_probs,
    probabilities,
    train_marginals,
)
from capo.lewidi.heads import bayes_decision
from capo.lewidi.perspectivist import PerspectivistArguments, annotator_rows, decide
from capo.lewidi.predictions import read_annotator_predictions
from capo.lewidi.stack import W_GRID, choose_weight, fit_stack, holdout_split, pool, run_stack


def _tiny_encoder():
    """A randomly initialised 1-layer BERT of width 8: enough to exercise the head, in milliseconds."""
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=16, max_position_embeddings=32))


def test_ordinal_cut_points_stay_ordered_and_the_distribution_sums_to_one():
    import torch

    torch.manual_seed(0)
    start = torch.tensor(3.0, requires_grad=True)
    gaps = torch.randn(9, requires_grad=True)  # any real gaps, negative ones included
    optimizer = torch.optim.SGD([start, gaps], lr=5.0)
    for _ in range(50):  # push the last cut below the first as hard as possible
        cuts = ordered_cuts(start, gaps)
        assert bool(torch.all(cuts[1:] > cuts[:-1]))
        optimizer.zero_grad()
        (cuts[-1] - cuts[0]).backward()
        optimizer.step()
    cuts = ordered_cuts(start, gaps).detach()
    assert bool(torch.all(cuts[1:] > cuts[:-1]))
    scores = torch.linspace(-20, 20, 41)
    probs = ordinal_log_probs(scores, torch.linspace(-4.5, 4.5, 10)).exp()
    assert probs.shape == (41, 11) and bool(torch.all(probs >= 0))
    assert torch.allclose(probs.sum(-1), torch.ones(41), atol=1e-6)
    # P(y > k) = sigmoid(s - b_k), by hand at s = b_k: one half above cut k.
    b = torch.linspace(-4.5, 4.5, 10)
    above = 1 - ordinal_log_probs(b[3:4], b).exp()[0, :4].sum()
    assert float(above) == pytest.approx(0.5)


def test_the_model_returns_whole_distributions_and_trains_its_cut_points_in_order(tmp_path):
    import torch

    items = read_lewidi(_split(tmp_path / "p.json", "par", 4, seed=3))
    torch.manual_seed(0)
    model = build_model(_tiny_encoder(), "par", train_marginals(items, "par"), dim=4, hidden=8)
    ids = torch.randint(0, 40, (3, 7))
    labels = torch.tensor([[0, 10, 5, 8], [0, -100, 5, -100], [3, 3, 3, 3]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(20):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        assert bool(torch.all(torch.diff(model.cuts()) > 0))
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
    assert logits.shape == (3, 4, 11)
    assert np.allclose(probabilities(logits.detach().numpy(), "par").sum(-1), 1.0)


def test_the_median_of_the_predictive_distribution_minimises_the_expected_absolute_distance():
    # By hand: 0.3 at -5, 0.15 at 0, 0.25 at +2, 0.3 at +5; the CDF first reaches 1/2 at +2, the median.
    # Expected |y - 2| = 0.3*7 + 0.15*2 + 0 + 0.3*3 = 3.3; at 0 it is 0.3*5 + 0.25*2 + 0.3*5 = 3.5.
    pmf = np.zeros(11)
    pmf[[0, 5, 7, 10]] = [0.3, 0.15, 0.25, 0.3]
    rows = [{"id": "i", "annotator": "Ann1"}]
    chosen = decide(rows, pmf[None], "par", bayes_decision("par"))[("i", "Ann1")][0]
    expected = {p: float(pmf @ np.abs(np.array(PAR_LABELS) - p)) for p in PAR_LABELS}
    assert chosen == 2 and expected[2] == pytest.approx(3.3) and expected[0] == pytest.approx(3.5)
    assert expected[chosen] == pytest.approx(min(expected.values()))
    # The same for distributions of the ordinal model itself, over a range of scores.
    import torch

    cuts = torch.linspace(-4.5, 4.5, 10)
    for s in np.linspace(-6, 6, 13):
        pmf = probabilities(ordinal_log_probs(torch.tensor([float(s)]), cuts).numpy(), "par")[0]
        chosen = decide(rows, pmf[None], "par", "median")[("i", "Ann1")][0]
        cost = [float(pmf @ np.abs(np.array(PAR_LABELS) - p)) for p in PAR_LABELS]
        assert cost[PAR_LABELS.index(chosen)] == pytest.approx(min(cost))


def test_ven_label_iff_its_probability_passes_one_half():
    # Logits 1.2, -0.3, 0.1 -> p = 0.769, 0.426, 0.525: contradiction and neutral, not entailment.
    probs = probabilities(np.array([[1.2, -0.3, 0.1]]), "ven")
    rows = [{"id": "i", "annotator": "Ann2"}]
    chosen = decide(rows, probs, "ven", bayes_decision("ven"))[("i", "Ann2")]
    assert chosen == ("contradiction", "neutral")

    def expected_error(labels):  # the per-label 0/1 error rate, each cell wrong with the other value's probability
        return np.mean([1 - p if lab in labels else p for lab, p in zip(VEN_LABELS, probs[0])])

    every = [s for n in range(4) for s in itertools.combinations(VEN_LABELS, n)]
    assert expected_error(chosen) == pytest.approx(min(map(expected_error, every)))
    # All three below 1/2: the empty set, the decision the error rate wants.
    assert decide(rows, np.array([[0.4, 0.1, 0.49]]), "ven", 0.5)[("i", "Ann2")] == ()


class _Habit:
    """A stand-in component: each annotator's train label frequencies (smoothed), whatever the text; records
    the items it is fitted on in `seen`, and those it predicts in `asked` (default: `seen` too)."""

    def __init__(self, dataset, seen, smooth=1.0, asked=None):
        self.dataset, self.seen, self.smooth = dataset, seen, smooth
        self.asked = seen if asked is None else asked

    def fit(self, items):
        self.seen.update(item.id for item in items)
        width = len(PAR_LABELS) if self.dataset == "par" else len(VEN_LABELS)
        counts, n = {a: np.zeros(width) for a in NAMES}, dict.fromkeys(NAMES, 0)
        for row in annotator_rows(items):
            if self.dataset == "par":
                counts[row["annotator"]][row["labels"]] += 1
            else:
                counts[row["annotator"]] += row["labels"]
            n[row["annotator"]] += 1
        if self.dataset == "par":  # a distribution over the points
            self.freq = {a: (c + self.smooth) / (c + self.smooth).sum() for a, c in counts.items()}
        else:  # one probability per label
            self.freq = {a: (c + self.smooth / 2) / (n[a] + self.smooth) for a, c in counts.items()}
        return self

    def predict(self, items):
        self.asked.update(item.id for item in items)
        return np.array([self.freq[r["annotator"]] for r in annotator_rows(items)])


def _scrambled(path, out):
    """The same Par split with each item's annotations rotated among its annotators (soft labels unchanged)."""
    data = json.loads(path.read_text())
    for row in data.values():
        given = list(row["annotations"].values())
        row["annotations"] = dict(zip(row["annotations"], given[1:] + given[:1]))
    out.write_text(json.dumps(data))
    return out


def test_the_stack_weight_is_chosen_on_train_items_only(tmp_path):
    from transformers import TrainingArguments

    train = _split(tmp_path / "par_train.json", "par", 20, seed=1)
    dev = _split(tmp_path / "par_dev.json", "par", 6, seed=2)
    scrambled = _scrambled(dev, tmp_path / "par_dev_scrambled.json")
    train_ids = {item.id for item in read_lewidi(train)}
    runs = []
    for name, scored in (("plain", dev), ("scrambled", scrambled)):
        seen: set[str] = set()  # items fitted on, or predicted while the weight is chosen
        scored_ids: set[str] = set()  # items the final components predict: the scored split's

        def make(component, stage, seen=seen, scored_ids=scored_ids):  # heads sharp, encoder near-uniform
            return _Habit("par", seen, smooth=0.1 if component == "heads" else 50.0,
                          asked=seen if stage == "holdout" else scored_ids)

        script = PerspectivistArguments(dataset="par", predictor="stack", train_file=str(train),
                                        dev_split=str(dev), predict_splits=str(scored))
        training = TrainingArguments(output_dir=str(tmp_path / name), use_cpu=True, report_to="none")
        metrics = run_stack(script, EncoderAnnArguments(), training, log=lambda *_: None, make=make)
        assert seen <= train_ids  # every item any component was fitted on or predicted while choosing: train's
        assert scored_ids == {item.id for item in read_lewidi(scored)}
        assert set(metrics["holdout_ids"]) <= train_ids and metrics["n_holdout_items"] == 4
        runs.append(metrics)
    plain, scrambled_run = runs
    assert plain["w_heads"] == scrambled_run["w_heads"] and plain["w_heads"] in W_GRID
    assert plain["holdout_perspectivist"] == scrambled_run["holdout_perspectivist"]
    assert plain["soft_rule"] == scrambled_run["soft_rule"]
    # Not vacuous: the scored split's labels do change its scores, just never the weight.
    assert plain["splits"][str(dev)]["scores"]["perspectivist"] == 0.0
    assert scrambled_run["splits"][str(scrambled)]["scores"]["perspectivist"] > 0.1
    # The sharp component (the habits) gets a weight at which the held-out train items score 0.
    assert plain["holdout_perspectivist"][str(plain["w_heads"])] == 0.0


def test_fit_stack_fits_on_the_rest_and_chooses_on_the_held_out_items(tmp_path):
    items = read_lewidi(_split(tmp_path / "v.json", "ven", 10, seed=4))
    fit, held = holdout_split(items, 0.2, seed=0)
    assert len(held) == 2 and {i.id for i in fit}.isdisjoint(i.id for i in held) and len(fit) + len(held) == 10
    fitted: dict[tuple, set] = {}

    class Spy(_Habit):
        def __init__(self, key):
            super().__init__("ven", set())
            self.key = key

        def fit(self, items):
            fitted[self.key] = {item.id for item in items}
            return super().fit(items)

    w, _, record, final = fit_stack(items, lambda name, stage: Spy((name, stage)), "ven", log=lambda *_: None)
    assert set(record["holdout_ids"]) == {i.id for i in held}
    assert fitted[("heads", "holdout")] == fitted[("encoder_ann", "holdout")] == {i.id for i in fit}
    assert fitted[("heads", "all")] == fitted[("encoder_ann", "all")] == {i.id for i in items}
    assert set(final) == {"heads", "encoder_ann"} and w in W_GRID
    # choose_weight by hand: component A right (p = 0.9 on the true labels), B wrong (0.1): w = 1 wins, w = 0 loses.
    rows = annotator_rows(held)
    truth = np.array([r["labels"] for r in rows])
    a, b = np.where(truth == 1, 0.9, 0.1), np.where(truth == 1, 0.1, 0.9)
    best, _, rec = choose_weight(held, a, b, "ven")
    assert rec["holdout_perspectivist"]["1.0"] == 0.0 and rec["holdout_perspectivist"]["0.0"] == 1.0
    assert best == 0.6  # every w above 1/2 scores 0 (0.9w + 0.1(1 - w) > 1/2): the tie nearest 1/2
    assert np.allclose(pool(0.25, a, b), 0.25 * a + 0.75 * b)


def _clear_copy(dev, out):
    records = json.loads(dev.read_text())
    for record in records.values():  # the _test_clear form: blank annotations, no soft label
        record["annotations"] = {a: "" for a in record["annotations"]}
        record["soft_label"] = {}
    out.write_text(json.dumps(records))
    return out


TINY = ["--max_length", "24", "--ann_batch_items", "4", "--ann_epochs", "10"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["ven", "par"])
def test_encoder_ann_learns_each_annotator_and_predicts_a_label_less_file(dataset, tmp_path):
    """The real pretrained MiniLM, 12 training items (48 pairs), 30 optimizer steps of 4 items."""
    train = _split(tmp_path / f"{dataset}_train.json", dataset, 12, seed=1)
    dev = _split(tmp_path / f"{dataset}_dev.json", dataset, 6, seed=2)
    clear = _clear_copy(dev, tmp_path / f"{dataset}_test_clear.json")
    out = tmp_path / "run"
    metrics = load_script("recipes/perspectivist.py").main(
        ["--config", "recipes/configs/perspectivist_cpu.yaml", "--dataset", dataset, "--predictor", "encoder_ann",
         "--train_file", str(train), "--dev_split", str(dev), "--predict_splits", f"{dev},{clear}",
         "--output_dir", str(out), *TINY])
    assert metrics["predictor"] == "encoder_ann" and metrics["global_step"] == 30
    assert metrics["decision"] == bayes_decision(dataset)
    entry = metrics["splits"][str(dev)]
    assert entry["scores"]["perspectivist"] == 0.0  # each annotator's habit, from the annotator embedding alone
    assert set(entry) >= {"most_frequent", "vs_most_frequent", "soft_by_rule"}
    assert "scores" not in metrics["splits"][str(clear)]
    predictions = read_annotator_predictions(out / f"predictions_{clear.stem}.jsonl", dataset)
    habits = VEN_HABITS if dataset == "ven" else {a: (p,) for a, p in PAR_HABITS.items()}
    assert all(labels == habits[a] for (_, a), labels in predictions.items()) and len(predictions) == 24
    for name in (f"soft_{clear.stem}.jsonl", f"soft_mean_{clear.stem}.jsonl", f"probs_{clear.stem}.jsonl",
                 f"codabench_{clear.stem}/res.zip", "metrics.json", "run_manifest.json", "encoder/model/weights.pt"):
        assert (out / name).exists(), name
    if dataset == "ven":
        assert metrics["splits"][str(clear)]["empty_set_share"] == 0.0  # no annotator's habit is the empty set


@pytest.mark.slow
@pytest.mark.heavy  # two encoder fits and two heads fits (~25 s alone): make test-all
def test_stack_runs_end_to_end_with_the_real_components(tmp_path):
    train = _split(tmp_path / "par_train.json", "par", 12, seed=1)
    dev = _split(tmp_path / "par_dev.json", "par", 6, seed=2)
    clear = _clear_copy(dev, tmp_path / "par_test_clear.json")
    out = tmp_path / "stack"
    metrics = load_script("recipes/perspectivist.py").main(
        ["--config", "recipes/configs/perspectivist_cpu.yaml", "--dataset", "par", "--predictor", "stack",
         "--train_file", str(train), "--dev_split", str(dev), "--predict_splits", f"{dev},{clear}",
         "--output_dir", str(out), *TINY])
    assert metrics["predictor"] == "stack" and metrics["w_heads"] in W_GRID and metrics["n_holdout_items"] == 2
    assert metrics["splits"][str(dev)]["scores"]["perspectivist"] == 0.0
    assert (out / "encoder_holdout/model/weights.pt").exists() and (out / "encoder/model/weights.pt").exists()
    assert (out / f"predictions_{clear.stem}.jsonl").exists() and "scores" not in metrics["splits"][str(clear)]


@pytest.mark.parametrize("flag, value, message", [
    ("--ann_dim", "0", "error: field 'ann_dim': must be at least 1, got 0"),
    ("--stack_holdout", "1.5", "error: field 'stack_holdout': must be strictly between 0 and 1, got 1.5"),
    ("--soft_rule", "median", "error: field 'soft_rule': unknown value 'median' (valid: bayes, aggregated, mean)"),
])
def test_bad_encoder_ann_input_is_one_line_and_writes_nothing(flag, value, message, tmp_path, capsys):
    main = load_script("recipes/perspectivist.py").main
    with pytest.raises(SystemExit) as stop:
        main(["--dataset", "par", "--predictor", "encoder_ann", flag, value, "--output_dir", str(tmp_path / "a")])
    assert stop.value.code == 2 and capsys.readouterr().err.strip() == message
    assert not (tmp_path / "a").exists()


def test_a_stack_needs_two_train_items(tmp_path):
    items = read_lewidi(_split(tmp_path / "p.json", "par", 1, seed=1))
    with pytest.raises(DataError, match="at least 2 train items"):
        holdout_split(items, 0.2)


def test_predictions_come_back_in_the_items_order_whatever_their_lengths(tmp_path):
    """Prediction sorts the items by length (less padding) and must undo it: a tiny random BERT with MiniLM's
    tokenizer, one training step, then the same items predicted forwards and backwards."""
    from transformers import AutoTokenizer, BertConfig, BertModel, TrainingArguments

    from capo.data.formats.lewidi import LewidiItem
    from capo.evaluate.finetune.arguments import default_model_path
    from capo.lewidi.annotator_encoder import EncoderAnn

    folder = tmp_path / "tiny"
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(folder)
    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
              ).save_pretrained(folder)
    items = [LewidiItem(f"i{k}", "par", ("word " * (1 + 5 * k), f"another text {k}"), NAMES,
                        {a: (PAR_HABITS[a],) for a in NAMES}, {p: 0.0 for p in PAR_LABELS}) for k in (3, 0, 2, 1)]
    training = TrainingArguments(output_dir=str(tmp_path / "fit"), use_cpu=True, report_to="none",
                                 save_strategy="no", disable_tqdm=True)
    encoder = EncoderAnn("par", str(folder), EncoderAnnArguments(ann_epochs=1, ann_batch_items=4), training,
                         tmp_path / "fit", log=lambda *_: None).fit(items)
    forwards, backwards = encoder.predict(items), encoder.predict(items[::-1])
    assert forwards.shape == (16, 11) and np.allclose(forwards.sum(1), 1.0)
    per_item = forwards.reshape(4, 4, 11)
    assert np.allclose(backwards.reshape(4, 4, 11)[::-1], per_item, atol=1e-6)
    assert not np.allclose(per_item[0], per_item[1])  # the items do differ, so a mix-up would show
