"""Codabench submission files for LeWiDi 2025 (`write_submission`).

For each dataset a soft file and a perspectivist file, one `<key>\\t<JSON list>` line per item in split order, no
header, zipped flat. The nesting follows the official targets:
VEN soft `[[1-p, p] for contradiction, entailment, neutral]`, VEN perspectivist `[[0/1 per annotator] for the same
three labels]`, Par soft `[p(-5), ..., p(5)]`, Par perspectivist `[label per annotator]`. File names: participants'
public code uses two spellings, and no official specification was found:
- `VariErrNLI_test_soft.tsv`, `VariErrNLI_test_pe.tsv`, `Paraphrase_test_soft.tsv`, `Paraphrase_test_pe.tsv`
  (naming "dataset", the default): AadiSanghani/LeWidi `res/VariErrNLI_test_pe.tsv`, `res/Paraphrase_test_soft.tsv`
  (files zipped as `res.zip`) and `generate_submission_varier_nli_simple.py`;
- `ven_test_soft.tsv`, `par_test_pe.tsv`, ... (naming "short"): tomasruizt/lewidi2025
  `lewidi_lib/src/lewidi_lib.py` (`dump_submission_file`, `submission_ds_name`, zipped as `res.zip`).
Both write the rows as above (tomasruizt cites the organisers' starting-kit Colab for the VEN label order). The
perspectivist vectors are sized by the item's distinct annotators, as the official targets are (AadiSanghani sizes
them by the `annotators` slots, which the scorer's `zip` pairing misaligns when an annotator gave two labels).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

from capo.data.formats.lewidi import LEWIDI_DATASETS, LewidiItem
from capo.errors import DataError
from capo.io import atomic_write_bytes, atomic_write_text
from capo.lewidi.predictions import (
    AnnotatorPredictions,
    SoftPredictions,
    aggregate_soft,
    check_complete,
    check_soft_complete,
    dataset_of,
    perspectivist_row,
    soft_row,
)

SUBMISSION_NAMING = ("dataset", "short")


def submission_names(dataset: str, naming: str = "dataset") -> tuple[str, str]:
    """(soft file, perspectivist file) names; see the module docstring for where each spelling comes from."""
    if naming not in SUBMISSION_NAMING:
        raise DataError(f"unknown naming {naming!r} (valid: {', '.join(SUBMISSION_NAMING)})", field="naming")
    prefix = LEWIDI_DATASETS[dataset] if naming == "dataset" else dataset
    return f"{prefix}_test_soft.tsv", f"{prefix}_test_pe.tsv"


def _tsv(items: Sequence[LewidiItem], row) -> str:
    return "".join(f"{item.id}\t{json.dumps(row(item))}\n" for item in items)


def write_submission(
    output_dir: str | Path,
    items: Sequence[LewidiItem],
    predictions: AnnotatorPredictions,
    soft: SoftPredictions | None = None,
    *,
    naming: str = "dataset",
    zip_name: str | None = "res.zip",
    predictions_path: str | Path = "predictions",
    soft_path: str | Path = "soft labels",
) -> list[Path]:
    """Write one dataset's soft and perspectivist files into `output_dir` (items in split order) and, with
    `zip_name`, (re)write a flat zip of every submission file in that folder, so exporting VEN and Par into the same
    folder leaves one archive to upload. Nothing is written unless the predictions cover the split."""
    check_complete(items, predictions, predictions_path)
    if soft is None:
        soft = aggregate_soft(items, predictions)
    check_soft_complete(items, soft, soft_path)
    dataset = dataset_of(items)
    soft_name, pe_name = submission_names(dataset, naming)
    output_dir = Path(output_dir)
    written = [output_dir / soft_name, output_dir / pe_name]
    atomic_write_text(written[0], _tsv(items, lambda item: soft_row(item, soft[item.id])))
    atomic_write_text(written[1], _tsv(items, lambda item: perspectivist_row(item, lambda a: predictions[(item.id, a)])))
    if zip_name:
        members = sorted(p for p in output_dir.glob("*_test_*.tsv") if p.name.endswith(("_test_soft.tsv", "_test_pe.tsv")))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for member in members:
                archive.write(member, member.name)  # flat: Codabench reads the files at the archive root
        atomic_write_bytes(output_dir / zip_name, buffer.getvalue())
        written.append(output_dir / zip_name)
    return written
