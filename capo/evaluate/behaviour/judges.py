"""Attribution judges: which of the annotators wrote this response (label + explanation)?

The trained judge is the pattern-analysis classifier fitted on the annotators' training histories. It refuses to
judge a response on an item it was trained on: its examples never include the evaluated item.

The LLM judge asks a causal LM a multiple-choice question: the examples of each annotator (from their training
history, never the evaluated item) under letters A-D, then the response, then "Answer:"; the next-token scores of
the letters (through the shared scoring engine) give a distribution over annotators. The assignment of annotators to
letters is rotated over all cyclic shifts and the probabilities averaged back per annotator, as MJDs average option
orders, so no annotator profits from a letter position.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from capo.data.schema import ANNOTATORS
from capo.errors import DataError
from capo.evaluate.behaviour.patterns import Response, accuracy_interval, features, make_classifier
from capo.evaluate.figures import save_figure
from capo.io import read_json, write_json

LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")


class TrainedJudge:
    """Logistic regression on char n-grams or MiniLM embeddings of the training histories' responses."""

    def __init__(self, kind: str = "char", *, with_label: bool = True, reduce: bool = False, seed: int = 0,
                 classes: Sequence[str] = ANNOTATORS) -> None:
        self.kind, self.with_label, self.reduce, self.seed = kind, with_label, reduce, seed
        self.classes = list(classes)
        self.train_items: set[str] = set()

    def fit(self, train: Sequence[Response]) -> TrainedJudge:
        present = sorted({r.annotator for r in train})
        if present != sorted(self.classes):
            raise DataError(f"training histories cover annotators {present}, expected {sorted(self.classes)}")
        self.train_items = {r.item_id for r in train}
        x = features(train, self.kind, reduce=self.reduce, with_label=self.with_label)
        self.model = make_classifier(self.kind, self.seed).fit(x, [r.annotator for r in train])
        return self

    def log_proba(self, rows: Sequence[Response]) -> np.ndarray:
        """Log-probability of each annotator (columns in `classes` order) for each response."""
        seen = [r.item_id for r in rows if r.item_id in self.train_items]
        if seen:
            raise DataError(f"{len(seen)} responses are on items the judge was trained on (e.g. {seen[0]}): "
                            "judge held-out items only", item=seen[0])
        x = features(rows, self.kind, reduce=self.reduce, with_label=self.with_label)
        out = np.full((len(rows), len(self.classes)), -np.inf)
        columns = [self.classes.index(c) for c in self.model.classes_]
        out[:, columns] = self.model.predict_log_proba(x)
        return out


def judge_prompt(response: Response, examples: dict[str, Sequence[Response]], order: Sequence[str]) -> str:
    """The multiple-choice question: annotator `order[i]`'s examples under letter i, then the response."""
    if response.item_id in {e.item_id for rows in examples.values() for e in rows}:
        raise DataError("the evaluated item is among the judge's examples", item=response.item_id)
    intro = ("Several annotators labelled sentence pairs and explained their labels. Here are examples of each "
             "annotator's responses.")
    parts = [intro, ""]
    for letter, name in zip(LETTERS, order):
        parts.append(f"Annotator {letter}:")
        parts.extend(f"- {e.label}: {e.explanation}" for e in examples[name])
        parts.append("")
    parts += ["Which annotator wrote this response?", f"- {response.label}: {response.explanation}", "",
              f"Answer with one letter ({', '.join(LETTERS[: len(order)])})."]
    return "\n".join(parts)


def pick_examples(history: Sequence[Response], per_annotator: int, seed: int = 0,
                  classes: Sequence[str] = ANNOTATORS) -> dict[str, list[Response]]:
    """`per_annotator` seeded examples of each annotator from the training history."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in classes:
        rows = [r for r in history if r.annotator == name]
        if len(rows) < per_annotator:
            raise DataError(f"annotator {name} has {len(rows)} history responses, fewer than {per_annotator}")
        out[name] = [rows[i] for i in rng.choice(len(rows), per_annotator, replace=False)]
    return out


class LLMJudge:
    """Annotator attribution from next-token letter scores; `render` turns a user message into the model's prompt
    (chat template), `score(prompts, letters)` returns next-token logits of the letters (the shared scoring engine)."""

    def __init__(self, score: Callable[[list[str], Sequence[str]], np.ndarray], render: Callable[[str], str],
                 history: Sequence[Response], *, per_annotator: int = 3, seed: int = 0,
                 classes: Sequence[str] = ANNOTATORS, cache: str | Path | None = None, settings: dict | None = None
                 ) -> None:
        self.score, self.render, self.classes = score, render, list(classes)
        self.history, self.per_annotator, self.seed = list(history), per_annotator, seed
        # A response's judgement depends on the response only (its examples are seeded by its content), so it is
        # computed once: the imitation measures judge the same responses several times (attribution, groups,
        # confusion, human ceilings). With `cache`, judgements are also kept on disk for a killed run to resume.
        self.cache = Path(cache) if cache else None
        self.settings = {**(settings or {}), "per_annotator": per_annotator, "seed": seed, "classes": self.classes}
        self.memo: dict[Response, list[float]] = {}
        if self.cache and self.cache.exists():
            stored = read_json(self.cache)
            if stored.get("settings") == self.settings:
                self.memo = {Response(*r[0][:4], tuple(r[0][4])): r[1] for r in stored["judgements"]}

    def log_proba(self, rows: Sequence[Response]) -> np.ndarray:
        todo = [row for row in dict.fromkeys(rows) if row not in self.memo]
        if todo:
            self.memo.update(zip(todo, self._judge(todo).tolist(), strict=True))
            if self.cache:
                write_json(self.cache, {"settings": self.settings, "judgements": [
                    [[r.item_id, r.annotator, r.label, r.explanation, list(r.inputs)], v] for r, v in self.memo.items()]})
        return np.array([self.memo[row] for row in rows], dtype=np.float64).reshape(len(rows), len(self.classes))

    def _judge(self, rows: Sequence[Response]) -> np.ndarray:
        n = len(self.classes)
        letters = LETTERS[:n]
        orders = [self.classes[s:] + self.classes[:s] for s in range(n)]  # every annotator under every letter once
        prompts, index = [], []
        for row_index, row in enumerate(rows):
            pool = [h for h in self.history if h.item_id != row.item_id]  # never the evaluated item
            examples = pick_examples(pool, self.per_annotator, self.seed + _content_seed(row), self.classes)
            for order in orders:
                prompts.append(self.render(judge_prompt(row, examples, order)))
                index.append((row_index, order))
        logits = np.asarray(self.score(prompts, letters), dtype=np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        total = np.zeros((len(rows), n))
        for (row_index, order), p in zip(index, probs):
            for letter_pos, name in enumerate(order):
                total[row_index, self.classes.index(name)] += p[letter_pos]
        return np.log(total / len(orders))


def _content(row: Response) -> str:
    return f"{row.item_id}\t{row.annotator}\t{row.label}\t{row.explanation}"


def _content_seed(row: Response) -> int:
    """A stable number from the response's content (not from its position in a batch)."""
    return zlib.crc32(_content(row).encode("utf-8"))


def judge_report(log_proba: np.ndarray, true: Sequence[str], classes: Sequence[str] = ANNOTATORS,
                 seed: int = 0) -> dict:
    """Accuracy with a bootstrap interval, per-annotator accuracy, the confusion matrix and chance."""
    from sklearn.metrics import confusion_matrix

    classes = list(classes)
    pred = [classes[i] for i in np.argmax(log_proba, axis=1)]
    correct = np.array([p == t for p, t in zip(pred, true)])
    acc, low, high = accuracy_interval(correct, seed)
    per = {c: float(np.mean([p == t for p, t in zip(pred, true) if t == c])) for c in classes if c in set(true)}
    return {"n": len(true), "accuracy": acc, "ci_low": low, "ci_high": high, "chance": 1 / len(classes),
            "per_annotator": per, "labels": classes,
            "confusion": confusion_matrix(list(true), pred, labels=classes).tolist()}


def confusion_plot(report: dict, path: str | Path, title: str = "") -> None:
    """The report's confusion matrix as a PNG (rows: true annotator, columns: judged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay(np.asarray(report["confusion"]), display_labels=report["labels"]).plot(ax=ax, colorbar=False)
    ax.set_title(title or f"accuracy {report['accuracy']:.2f} (chance {report['chance']:.2f})")
    fig.tight_layout()
    save_figure(fig, path)


def histories_and_heldout(task: str, dataset: str | None = None, split_seed: int = 0
                          ) -> tuple[list[Response], list[Response], list]:
    """The annotators' training-history responses, their held-out responses and the held-out items, cut as the
    explainers' data is (VariErr: seeded item-disjoint split, held-out = test; LeWiDi: its own files, held-out = dev
    where the test split carries no labels)."""
    from capo.data.datasets import load_task_data
    from capo.evaluate.behaviour.patterns import responses

    data = load_task_data(task, dataset, split_seed)
    heldout = data.items("test") or data.items("dev")
    return responses(data.items("train")), responses(heldout), heldout


def llm_judge(model: str, history: Sequence[Response], *, dtype: str = "float32", per_annotator: int = 3,
              seed: int = 0, batch_size: int = 16, cache: str | Path | None = None, device=None) -> LLMJudge:
    """An LLM judge on a causal LM (hub id or folder) on `device` (None: `capo.precision.resolve_device`, the
    accelerator when there is one): the model's chat template, the shared HF scorer (inputs follow the model);
    `cache`: a JSON file of its judgements, reused by a rerun with the same model, dtype, history and settings."""
    from capo.data.prompts import render_chat
    from capo.generate.backends.hf import load_causal_lm
    from capo.generate.scoring import HFScorer

    lm, tokenizer = load_causal_lm(model, dtype, device)
    scorer = HFScorer(lm, tokenizer, batch_size=batch_size)
    history_id = hashlib.sha256("\n".join(map(_content, history)).encode("utf-8")).hexdigest()
    settings = {"model": str(model), "dtype": dtype, "history": history_id}
    return LLMJudge(scorer.score_next_token, lambda text: render_chat(tokenizer, text), history,
                    per_annotator=per_annotator, seed=seed, cache=cache, settings=settings)
