"""The comparison table over runs: mean ± sd over seeds per source, the constant predictors, and the verdict."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from capo.evaluate.finetune.data import chaosnli_examples, training_examples
from capo.evaluate.finetune.scoring import HIGHER_IS_BETTER, METRICS, constant_scores

Table = dict[str, dict[str, dict[str, tuple[float, float, int]]]]


def reference_constants() -> dict[str, dict[str, float]]:
    """split -> scores of always predicting the mean ChaosNLI HJD of the 341 training items: the constant every
    table includes, so a source is never judged only against its own (possibly far worse) training mean."""
    train = training_examples("chaosnli")
    return {split: constant_scores(train, chaosnli_examples(split))["train_mean"] for split in ("dev", "test")}


def aggregate(runs: Sequence[Mapping], reference: Mapping | None = None) -> Table:
    """row name -> split -> metric -> (mean, sd, n) over seeds. Rows: each trained source, then the constants
    (uniform once; the training mean once per source, since each source has its own mean; and `reference`, the
    ChaosNLI training mean from `reference_constants()`, as `train_mean[chaosnli]` when no run already gave it)."""
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(name: str, split: str, values: Mapping[str, float]) -> None:
        bucket = rows.setdefault(name, {}).setdefault(split, {})
        for metric in METRICS:
            bucket.setdefault(metric, []).append(float(values[metric]))

    for run in runs:
        for split in ("dev", "test"):
            add(run["source"], split, run[split])
    seen_constants = set()
    for run in runs:
        if run["source"] in seen_constants:
            continue  # constants do not depend on the seed
        seen_constants.add(run["source"])
        for split in ("dev", "test"):
            if "uniform" not in rows or split not in rows["uniform"]:
                add("uniform", split, run["constants"][split]["uniform"])
            add(f"train_mean[{run['source']}]", split, run["constants"][split]["train_mean"])
    if reference is not None and "train_mean[chaosnli]" not in rows:
        for split in ("dev", "test"):
            add("train_mean[chaosnli]", split, reference[split])
    return {
        name: {
            split: {m: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v))
                    for m, v in metrics.items()}
            for split, metrics in splits.items()
        }
        for name, splits in rows.items()
    }


def is_constant_row(name: str) -> bool:
    return name == "uniform" or name.startswith("train_mean[")


def beats_constants(table: Mapping, split: str = "test", metric: str = "kl") -> dict[str, bool]:
    """For each trained source: does its mean beat the best constant predictor on `metric`?"""
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    best = min(sign * row[split][metric][0] for name, row in table.items() if is_constant_row(name))
    return {name: sign * row[split][metric][0] < best for name, row in table.items() if not is_constant_row(name)}


def verdict(table: Mapping, split: str = "test") -> str:
    """One sentence per headline metric naming the best constant predictor and which trained sources (if any) beat
    it, with the margin next to the spread over seeds (a margin inside the sd is no evidence of learning)."""
    lines = []
    for metric in ("kl", "macro_f1"):
        sign = -1 if metric in HIGHER_IS_BETTER else 1
        best_name = min((n for n in table if is_constant_row(n)), key=lambda n: sign * table[n][split][metric][0])
        best = table[best_name][split][metric][0]
        head = f"On {split} {metric}, the best constant predictor is {best_name} ({best:.4f})"
        winners = [name for name, ok in beats_constants(table, split, metric).items() if ok]
        if not winners:
            lines.append(f"{head}; NO trained source beats it.")
            continue
        parts = []
        for name in winners:
            mean, sd, _ = table[name][split][metric]
            spread = "" if math.isnan(sd) else f", sd over seeds {sd:.4f}"
            parts.append(f"{name} (by {abs(mean - best):.4f}{spread})")
        lines.append(f"{head}; beating it: {', '.join(parts)}.")
    return " ".join(lines)


def _cell(value: tuple[float, float, int]) -> str:
    mean, sd, _ = value
    return f"{mean:.4f}" if math.isnan(sd) else f"{mean:.4f} ± {sd:.4f}"


def format_markdown(table: Mapping) -> str:
    """Two Markdown tables (dev, test): mean ± sd over seeds per metric, constants marked, then the verdict."""
    parts = []
    for split in ("dev", "test"):
        lines = [f"**ChaosNLI {split}** (mean ± sd over seeds; n = runs)", "",
                 "| source | n | " + " | ".join(METRICS) + " |", "| --- | ---: |" + " ---: |" * len(METRICS)]
        for name, row in table.items():
            label = f"{name} (constant)" if is_constant_row(name) else name
            n = row[split][METRICS[0]][2]
            lines.append(f"| {label} | {n} | " + " | ".join(_cell(row[split][m]) for m in METRICS) + " |")
        parts.append("\n".join(lines))
    parts.append(verdict(table, "dev") + "\n\n" + verdict(table, "test"))
    return "\n\n".join(parts) + "\n"


def format_csv(table: Mapping) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "constant", "split", "n", *[f"{m}_{s}" for m in METRICS for s in ("mean", "sd")]])
    for name, row in table.items():
        for split, metrics in row.items():
            values = [f"{metrics[m][k]:.6f}" for m in METRICS for k in (0, 1)]
            writer.writerow([name, is_constant_row(name), split, metrics[METRICS[0]][2], *values])
    return buffer.getvalue()
