"""The shipped data sets by name, and `load_items`: a registered name or a path -> `capo.data.schema.Item`s.

NLI items that are VariErr items keep their VariErr id (the MNLI pairID, e.g. "23751e") whatever file they come
from, so distributions from different files join on `id`. Other items get a stable content id (`text_id`).
"""

from __future__ import annotations

from pathlib import Path

from capo.data.formats.common import (
    CHAOS_DIR,
    LEWIDI_DIR,
)
from capo.data.formats.jsonl import load_items_jsonl
from capo.data.formats.lewidi import load_lewidi
from capo.data.formats.mjd_files import load_chaosnli, load_nli341
from capo.data.formats.varierr import load_varierr
from capo.data.schema import Item
from capo.errors import DataError

DATASETS = {
    "varierr": lambda: load_varierr(),
    "nli341": lambda: load_nli341(),
    "chaosnli-dev": lambda: load_chaosnli(CHAOS_DIR / "dev.json"),
    "chaosnli-test": lambda: load_chaosnli(CHAOS_DIR / "test.json"),
    **{
        f"lewidi-{short}-{split}": (lambda d=d, split=split: load_lewidi(LEWIDI_DIR / d / f"{d}_{split}.json"))
        for short, d, splits in (("ven", "VariErrNLI", ("train", "dev", "test")), ("par", "Paraphrase", ("train", "dev")))
        for split in splits
    },
}


def load_items(name_or_path: str) -> list[Item]:
    """A shipped data set by name (see `DATASETS`) or a path: `.jsonl` in capo's format, LeWiDi `.json`."""
    if name_or_path in DATASETS:
        return DATASETS[name_or_path]()
    path = Path(name_or_path)
    if not path.exists():
        raise DataError(f"not a file and not a shipped data set (known: {', '.join(DATASETS)})", path=name_or_path)
    if path.suffix == ".jsonl":
        return load_items_jsonl(path)
    return load_lewidi(path)
