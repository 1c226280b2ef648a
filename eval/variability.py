"""Explanation variability (ACL 2025 measures): lexical and POS n-gram overlap, embedding similarity; within each
item's explanation set and against the item's inputs; human vs released-model vs generated explanations.

    python eval/variability.py --human nli341 \\
        --model_explanations Llama3=data/mjd/model_explanations/Llama3/Label-Free-first.json \\
        --generated A2-sft=runs/generate/tiny/generations.jsonl --output results/variability.json

Every source is measured on the items of the --human data set it covers. POS measures need spaCy's English
pipeline; without it they are left out and the table says so.
"""

from __future__ import annotations

import argparse
import json
import time

from capo.cli import run_main
from capo.data.formats.mjd_files import load_model_explanations
from capo.data.registry import load_items
from capo.errors import DataError
from capo.evaluate.behaviour.variability import pos_tagger, variability
from capo.io import atomic_write_text, iter_jsonl


def _named(spec: str, flag: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise DataError(f"expected NAME=PATH, got {spec!r}", field=flag)
    return name, path


def generated_sets(path: str) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    for _, row in iter_jsonl(path):
        text = str(row.get("explanation") or "").strip()
        if row.get("parsed", True) and text:
            sets.setdefault(str(row.get("id")), []).append(text)
    return sets


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--human", default="nli341", help="data set whose annotators' explanations are the human set")
    parser.add_argument("--model_explanations", action="append", default=[], metavar="NAME=PATH",
                        help="a released LLM explanation file (repeatable)")
    parser.add_argument("--generated", action="append", default=[], metavar="NAME=PATH",
                        help="a generations.jsonl of capo's explainers (repeatable)")
    parser.add_argument("--no_embeddings", action="store_true")
    parser.add_argument("--output", help="write the table as JSON")
    args = parser.parse_args(argv)
    items = load_items(args.human)
    inputs = {item.id: " ".join(item.inputs.values()) for item in items}
    sources = {"human": {item.id: [a.explanation for a in item.annotations if a.explanation.strip()] for item in items}}
    for spec in args.model_explanations:
        name, path = _named(spec, "--model_explanations")
        sources[name] = {k: [e for e, _ in v] for k, v in load_model_explanations(path).items() if k in inputs}
    for spec in args.generated:
        name, path = _named(spec, "--generated")
        sources[name] = {k: v for k, v in generated_sets(path).items() if k in inputs}
    table = {}
    for name, sets in sources.items():
        start = time.perf_counter()
        table[name] = {**variability(sets, inputs, embeddings=not args.no_embeddings),
                       "seconds": time.perf_counter() - start}
    columns = [c for c in next(iter(table.values())) if c not in ("seconds",)]
    print("| source | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if c not in ("items", "explanations") else f"{row[c]:.0f}"
                                          for c in columns) + " |")
    if pos_tagger() is None:
        print("POS measures left out: no spaCy English pipeline is installed")
    if args.output:
        atomic_write_text(args.output, json.dumps({"human": args.human, "table": table}, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
