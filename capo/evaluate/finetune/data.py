"""Fine-tuning data: soft-label training sources on the 341 items, ChaosNLI dev/test, hard-label NLI files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capo.data.distributions import read_distributions
from capo.data.formats.common import CHAOS_DIR
from capo.data.formats.mjd_files import load_chaosnli, load_nli341
from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.distributions.compare import baseline_distributions
from capo.evaluate.finetune.arguments import SOURCES, FinetuneArguments
from capo.io import iter_jsonl


@dataclass
class Example:
    """One premise/hypothesis pair with its target distribution over [E, N, C]."""

    id: str
    premise: str
    hypothesis: str
    distribution: list[float]


@dataclass
class FinetuneData:
    """Everything a run reads, loaded and checked before anything is written."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    selection: list[Example]  # the dev items the checkpoint is selected on
    first_stage: list[Example] | None
    ood: list[Example] | None


def source_name(source: str) -> str:
    """A short name for a source: the baseline name, or a distribution file's stem."""
    return source if source in SOURCES else Path(source).stem


def training_distributions(source: str, items=None) -> dict[str, list[float]]:
    """id -> soft label on the 341 items: a baseline by name, or a distribution JSONL whose ids are exactly the items'.

    `read_distributions` already rejects rows that are not probability vectors with a located one-line error."""
    items = load_nli341() if items is None else items
    if source in SOURCES:
        return baseline_distributions(items)[source]
    if not Path(source).exists():
        raise DataError(f"not a file and not a known source (known: {', '.join(SOURCES)})", path=source)
    dists = read_distributions(source)
    wanted = {item.id for item in items}
    missing, extra = sorted(wanted - set(dists)), sorted(set(dists) - wanted)
    if missing or extra:
        example = f"e.g. {extra[0]!r} is not a training item" if extra else f"e.g. {missing[0]!r} is missing"
        raise DataError(
            f"ids do not match the {len(wanted)} training items: {len(missing)} missing, {len(extra)} unknown, "
            + example,
            path=source,
            field="id",
        )
    return dists


def training_examples(source: str, items=None) -> list[Example]:
    items = load_nli341() if items is None else items
    dists = training_distributions(source, items)
    return [Example(i.id, i.inputs["premise"], i.inputs["hypothesis"], list(dists[i.id])) for i in items]


def chaosnli_examples(split: str) -> list[Example]:
    """ChaosNLI dev or test (629 items each) with the 100-annotator HJD as target."""
    if split not in ("dev", "test"):
        raise DataError(f"unknown ChaosNLI split {split!r} (valid: dev, test)")
    return [
        Example(i.id, i.inputs["premise"], i.inputs["hypothesis"], i.distributions["chaosnli"])
        for i in load_chaosnli(CHAOS_DIR / f"{split}.json")
    ]


def load_nli_hard_labels(path: str | Path) -> list[Example]:
    """An NLI file with one gold label per pair, as one-hot examples.

    ANLI format (JSONL: `uid`, `premise`, `hypothesis`, `label` in e/n/c; R1/R2/R3 `test.jsonl`) and MNLI/SNLI
    JSONL (`pairID`, `sentence1`, `sentence2`, `gold_label`) are both read. MNLI rows whose gold label is `-`
    (no majority) are skipped, as every MNLI user does.
    """
    examples = []
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item_id = row.get("uid", row.get("pairID", row.get("id", f"line{line}")))
        where["item"] = str(item_id)
        texts = []
        for names in (("premise", "sentence1"), ("hypothesis", "sentence2")):
            value = next((row[n] for n in names if n in row), None)
            if not isinstance(value, str) or not value.strip():
                raise DataError("missing or empty text", field=" / ".join(names), **where)
            texts.append(value)
        label_field = "label" if "label" in row else "gold_label"
        label = row.get(label_field)
        if label == "-" and label_field == "gold_label":
            continue
        try:
            index = NLI.index(str(label)) if not isinstance(label, bool) and label is not None else None
        except ValueError:
            index = None
        if index is None:
            raise DataError(f"unknown label {label!r} (valid: e, n, c or the full names)", field=label_field, **where)
        examples.append(Example(str(item_id), texts[0], texts[1], [float(k == index) for k in range(len(NLI))]))
    if not examples:
        raise DataError("no labelled pairs in file", path=str(path))
    return examples


def select_subset(examples: Sequence[Example], size: int | None, seed: int = 0) -> list[Example]:
    """A seeded random subset (the same for every run with the same seed), or all examples."""
    if not size or size >= len(examples):
        return list(examples)
    picked = np.random.default_rng(seed).choice(len(examples), size=size, replace=False)
    return [examples[k] for k in sorted(picked)]


def load_finetune_data(script: FinetuneArguments, items=None) -> FinetuneData:
    """Read and check every input of a run (training source, ChaosNLI, first-stage and OOD files)."""
    dev = chaosnli_examples("dev")
    return FinetuneData(
        train=training_examples(script.source, items),
        dev=dev,
        test=chaosnli_examples("test"),
        selection=select_subset(dev, script.selection_dev_size),
        first_stage=load_nli_hard_labels(script.first_stage_file) if script.first_stage_file else None,
        ood=load_nli_hard_labels(script.ood_test_file) if script.ood_test_file else None,
    )


def to_dataset(examples: Sequence[Example], tokenizer, max_length: int):
    """A tokenised `datasets.Dataset` with float `labels` (the target distribution)."""
    from datasets import Dataset

    data = Dataset.from_dict(
        {
            "premise": [e.premise for e in examples],
            "hypothesis": [e.hypothesis for e in examples],
            "labels": [e.distribution for e in examples],
        }
    )
    return data.map(
        lambda batch: tokenizer(batch["premise"], batch["hypothesis"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["premise", "hypothesis"],
    )
