"""What every perspectivist predictor (`capo.lewidi.perspectivist`'s encoder, `capo.lewidi.heads`) writes for one
predicted split, and the record of it in `metrics.json` (`write_split`).

Files, `<tag>` being the split name or a split file's stem: `predictions_<tag>.jsonl` (per annotator),
`soft_<tag>.jsonl` (the predictor's soft labels), `soft_mean_<tag>.jsonl` (the mean of the annotators'
probabilities), `probs_<tag>.jsonl` (per (item, annotator) probabilities, official label order) and the Codabench
files in `codabench_<tag>/` (`capo.lewidi.submission`). A labelled split also gets its official scores, the
most-frequent constant's, and a paired item bootstrap of the difference (`capo.lewidi.score.paired_bootstrap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from capo.data.formats.lewidi import LewidiItem, lewidi_split_path
from capo.io import write_jsonl
from capo.lewidi.baselines import most_frequent_predictions
from capo.lewidi.predictions import (
    AnnotatorPredictions,
    SoftPredictions,
    write_annotator_predictions,
    write_soft_predictions,
)
from capo.lewidi.score import paired_bootstrap, score
from capo.lewidi.submission import write_submission


def split_tag(split: str) -> str:
    """A file-name tag for a split: its name, or a file's stem."""
    return split if split in ("train", "dev", "test") else Path(split).stem


def empty_share(predictions: AnnotatorPredictions) -> float:
    """VEN: the share of (item, annotator) predictions that are the empty label set."""
    return sum(len(labels) == 0 for labels in predictions.values()) / max(1, len(predictions))


def write_split(output_dir: Path, name: str, items: Sequence[LewidiItem], rows: Sequence[dict], probs: np.ndarray,
                predictions: AnnotatorPredictions, soft: SoftPredictions, soft_mean: SoftPredictions,
                train_items: Sequence[LewidiItem], *, seed: int = 0) -> dict:
    """Write one split's files and return its `metrics.json` entry (scores only where the split is labelled)."""
    dataset, tag = items[0].dataset, split_tag(name)
    write_annotator_predictions(output_dir / f"predictions_{tag}.jsonl", predictions, dataset)
    write_soft_predictions(output_dir / f"soft_{tag}.jsonl", soft)
    write_soft_predictions(output_dir / f"soft_mean_{tag}.jsonl", soft_mean)
    write_jsonl(output_dir / f"probs_{tag}.jsonl",
                ({"id": r["id"], "annotator": r["annotator"], "probs": [round(float(x), 6) for x in p]}
                 for r, p in zip(rows, probs)))
    written = write_submission(output_dir / f"codabench_{tag}", items, predictions, soft)
    entry: dict = {"file": str(lewidi_split_path(dataset, name)), "n_items": len(items), "n_pairs": len(rows),
                   "codabench": [str(p) for p in written]}
    if dataset == "ven":
        entry["empty_set_share"] = empty_share(predictions)
    if all(item.labelled for item in items):
        constant = most_frequent_predictions(train_items, items)
        entry["scores"] = score(items, predictions, soft)
        entry["soft_mean"] = score(items, None, soft_mean)["soft"]
        entry["most_frequent"] = score(items, constant)
        entry["vs_most_frequent"] = paired_bootstrap(items, (predictions, soft), (constant, None), seed=seed)
    return entry
