"""One neutral schema for VariErr-style data: items, per-annotator annotations, label spaces.

Every reader in `capo.data.formats` produces these objects, and every later stage (pair building, training,
MJD estimation, evaluation) reads them. Annotator ids are canonical `A1..A4` whatever the source calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capo.errors import DataError


@dataclass(frozen=True)
class LabelSpace:
    """An ordered set of labels. NLI is always [entailment, neutral, contradiction]."""

    name: str
    labels: tuple[str, ...]
    short: tuple[str, ...]  # one-letter (NLI) or identical (Likert) codes used by some source files
    ordinal: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        return self.labels.index(self.normalise(label))

    def normalise(self, label: str) -> str:
        """Map a long or short label spelling to the canonical one; raise ValueError if unknown."""
        text = str(label).strip().lower()
        if text in self.labels:
            return text
        if text in self.short:
            return self.labels[self.short.index(text)]
        if self.ordinal:  # "+3", "3.0" are common spellings of a Likert point
            try:
                value = float(text)
            except ValueError:
                pass
            else:
                if value.is_integer() and str(int(value)) in self.labels:
                    return str(int(value))
        raise ValueError(f"unknown label {label!r} (valid: {', '.join(self.labels)})")


NLI = LabelSpace("nli", ("entailment", "neutral", "contradiction"), ("e", "n", "c"))
LIKERT = LabelSpace(
    "paraphrase", tuple(str(v) for v in range(-5, 6)), tuple(str(v) for v in range(-5, 6)), ordinal=True
)
TASKS: dict[str, LabelSpace] = {"nli": NLI, "paraphrase": LIKERT}
# Input fields of each task, in the order they are shown to a model.
TASK_INPUTS: dict[str, tuple[str, str]] = {"nli": ("premise", "hypothesis"), "paraphrase": ("question1", "question2")}
ANNOTATORS: tuple[str, ...] = ("A1", "A2", "A3", "A4")
# The annotator name of a conditioned explainer: one adapter trained for every annotator, each row's annotator id in
# its prompt (`capo.data.prompts.persona_line`).
CONDITIONED = "all"


def label_space(task: str) -> LabelSpace:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r} (valid: {', '.join(TASKS)})")
    return TASKS[task]


def check_annotator(annotator: str, conditioned: bool = False) -> str:
    """`annotator` if it is one of ANNOTATORS (or, with `conditioned`, CONDITIONED); else a one-line DataError."""
    valid = ANNOTATORS + ((CONDITIONED,) if conditioned else ())
    if annotator not in valid:
        raise DataError(f"unknown annotator {annotator!r} (valid: {', '.join(valid)})")
    return annotator


@dataclass
class Annotation:
    """One label + explanation by one annotator on one item (an annotator may give several per item)."""

    annotator: str | None  # canonical A1..A4; None where the source does not say who wrote it
    label: str
    explanation: str
    votes: dict[str, bool] = field(default_factory=dict)  # voter id -> "makes sense", author's own vote included
    self_corrected: bool = False  # the author did not validate their own pair in round 2
    label_correction: bool = False

    def peer_votes(self) -> list[bool]:
        return [ok for voter, ok in self.votes.items() if voter != self.annotator]


@dataclass
class Item:
    """An item: its inputs, the annotations on it, and optional reference distributions over its label space."""

    id: str
    task: str
    inputs: dict[str, str]
    annotations: list[Annotation] = field(default_factory=list)
    error_labels: tuple[str, ...] = ()
    distributions: dict[str, list[float]] = field(default_factory=dict)  # e.g. "chaosnli": [pE, pN, pC]
    validated: bool = False  # True when the source has peer validity votes (VariErr); False for LeWiDi sets
    meta: dict = field(default_factory=dict)

    @property
    def label_space(self) -> LabelSpace:
        return label_space(self.task)

    def annotators(self) -> list[str]:
        """Distinct annotators present on the item, in canonical order."""
        present = {a.annotator for a in self.annotations if a.annotator}
        return [a for a in ANNOTATORS if a in present]

    def by_annotator(self, annotator: str) -> list[Annotation]:
        return [a for a in self.annotations if a.annotator == annotator]

    def label_counts(self) -> list[int]:
        """How many annotations carry each label, in label-space order."""
        counts = [0] * len(self.label_space)
        for annotation in self.annotations:
            counts[self.label_space.index(annotation.label)] += 1
        return counts
