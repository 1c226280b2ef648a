"""Judge-based attribution and aggregation-aware imitation of generated responses (the CAPO paper's study).

    python eval/imitation.py --task nli --generated sft=runs/gen/sft/generations.jsonl \\
        --generated capo=runs/gen/capo/generations.jsonl --output results/imitation_nli.json --plots results/cm

A trained judge (char n-grams + logistic regression; --features embedding for MiniLM) is fitted on the annotators'
training histories and applied to (a) the real held-out responses — the sanity check and the human ceiling — and
(b) every generated file. A record's target is its `target` field, else its `annotator` field when that is an
annotator id (A1..A4); records of the base model (no target) are attributed but have no target to imitate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from capo.cli import ArgumentParser, run_main
from capo.data.schema import label_space
from capo.errors import DataError
from capo.evaluate.behaviour.imitation import judge_sources, read_generations
from capo.evaluate.behaviour.judges import TrainedJudge, confusion_plot, histories_and_heldout, llm_judge
from capo.evaluate.behaviour.patterns import FEATURES
from capo.io import atomic_write_text, check_model_path, check_output


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise DataError(f"expected NAME=PATH, got {spec!r}", field="--generated")
    return name, path


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__)  # a bad flag or value: one line, not argparse's usage text
    parser.add_argument("--task", choices=("nli", "paraphrase"), default="nli")
    parser.add_argument("--dataset", help="varierr (nli default) or lewidi-ven / lewidi-par")
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--generated", action="append", default=[], metavar="NAME=PATH",
                        help="a generations.jsonl (repeatable)")
    parser.add_argument("--judge", choices=("trained", "llm"), default="trained")
    parser.add_argument("--features", choices=FEATURES, default="char", help="trained judge: its features")
    parser.add_argument("--judge_model", help="LLM judge: hub id or folder (e.g. models/smollm2-135m-instruct)")
    parser.add_argument("--judge_dtype", default="float32")
    parser.add_argument("--judge_examples", type=int, default=3, help="LLM judge: history examples per annotator")
    parser.add_argument("--limit", type=int, help="judge only the first N responses of each set (LLM judge cost)")
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_embeddings", action="store_true", help="skip the embedding-centroid measure")
    parser.add_argument("--judge_cache", help="LLM judge: keep its judgements in this JSON file; a rerun with the "
                                              "same model and settings reuses them (a killed run resumes)")
    parser.add_argument("--output", help="JSON report")
    parser.add_argument("--plots", help="folder for confusion-matrix PNGs")
    args = parser.parse_args(argv)
    if args.judge == "llm" and not args.judge_model:
        raise DataError("the LLM judge needs a model", field="--judge_model")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"limit must be at least 1, got {args.limit}", field="--limit")
    if args.judge == "llm":
        check_model_path(args.judge_model)
    if any(k < 1 for k in args.ks):
        raise DataError(f"group sizes must be at least 1, got {args.ks}", field="--ks")
    sources = [_named(spec) for spec in args.generated]
    names = [name for name, _ in sources]
    if len(set(names)) < len(names):  # the report is keyed by name: the second set would replace the first
        twice = next(name for name in names if names.count(name) > 1)
        raise DataError(f"name {twice!r} given twice", field="--generated")
    if args.output:
        check_output(args.output)
    if args.plots:
        check_output(args.plots, folder=True)
    space = label_space(args.task)
    start = time.perf_counter()
    history, heldout, heldout_items = histories_and_heldout(args.task, args.dataset, args.split_seed)
    items = {item.id: item for item in heldout_items}
    records = {name: read_generations(path, items) for name, path in sources}  # every row checked before judging
    if args.judge == "llm":
        judge = llm_judge(args.judge_model, history, dtype=args.judge_dtype, per_annotator=args.judge_examples,
                          seed=args.seed, cache=args.judge_cache)
    else:
        judge = TrainedJudge(args.features, with_label=True, seed=args.seed).fit(history)
    if args.limit:
        heldout = heldout[: args.limit]
        records = {name: rows[: args.limit] for name, rows in records.items()}
    judged = judge_sources(judge, heldout, items, space, records, ks=args.ks,
                           seed=args.seed, embeddings=not args.no_embeddings)
    human = judged["human_heldout"]
    report = {"task": args.task, "judge": args.judge, "judge_model": args.judge_model, "features": args.features,
              "split_seed": args.split_seed, "seed": args.seed, "judge_history": len(history), **judged}
    print(f"{args.judge} judge on {len(history)} history responses; human held-out accuracy {human['accuracy']:.3f} "
          f"[{human['ci_low']:.3f}, {human['ci_high']:.3f}] (chance {human['chance']:.2f})")
    for name, entry in judged["sources"].items():
        for target, row in entry.items():
            if "attributed" not in row:
                continue
            unparsed = row["unparsed"]
            if "note" in row:
                print(f"{name} {target}: {row['note']}, unparsed {unparsed}")
            elif "target" in row:
                single = row["attribution"][0]
                print(f"{name} {target}: recognised {single['recognised']:.3f} (k={single['k']}), "
                      f"label JS {row['label_js_target']:.3f}, item agreement {row['item_label_agreement']:.3f}, "
                      f"unparsed {unparsed}")
            else:
                print(f"{name} (no target): attributed {row['attributed']}, unparsed {unparsed}")
    if args.plots:
        tag = args.task if args.judge == "trained" else f"{args.task}_llm"
        plots = [("human", human, "human held-out"), *((name, rep, name) for name, rep in judged["confusion"].items())]
        for name, rep, title in plots:
            confusion_plot(rep, Path(args.plots) / f"confusion_{tag}_{name}.png", f"{title}: acc {rep['accuracy']:.2f}")
    report["seconds"] = round(time.perf_counter() - start, 1)
    if args.output:
        atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
