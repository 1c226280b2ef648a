"""Aggregation-aware imitation: does an explainer behave like *its* annotator once behaviour is aggregated?

For one target annotator, the explainer's generated responses on held-out items are compared with every real
annotator's held-out responses on the same items (the real responses are restricted to the items the generated set
covers, so a source that covers 12 of 50 held-out items is compared with the humans on those 12; each report records
in `basis` how many items and responses each number rests on):
- group attribution: the judge applied to groups of k generated responses (k = 1, 2, 4, 8, 16); the same protocol
  on the target's own held-out responses is the human ceiling;
- label-marginal match: JS distance between the target's label distribution and the generated one;
- nearest real annotator by the cosine of MiniLM embedding centroids;
- style statistics (length, hedging and negation rates, overlap with the input);
- per-item label agreement with the target.

`eval/imitation.py` is `ImitationArguments` and one call, `run_imitation`.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capo.cli import named_values, repeatable
from capo.data.schema import ANNOTATORS, Item, LabelSpace, check_annotator, label_space
from capo.errors import DataError
from capo.evaluate.behaviour.judges import (
    TrainedJudge,
    confusion_plot,
    histories_and_heldout,
    judge_report,
    llm_judge,
)
from capo.evaluate.behaviour.patterns import FEATURES, Response, accuracy_interval, embed, group_predictions
from capo.io import check_model_path, check_output, iter_jsonl, write_json

_WORD = re.compile(r"[a-z']+")
_ANNOTATOR_ID = re.compile(r"A\d+")  # shaped like an annotator id; other record names ("base", "sft") have no target
HEDGES = ("may", "might", "could", "possibly", "perhaps", "probably", "likely", "unlikely", "seems", "seem",
          "unclear", "suggests", "suggest", "maybe", "uncertain", "assume")
NEGATIONS = ("not", "no", "never", "nothing", "none", "neither", "nor", "without", "cannot")


def target_of(record: Mapping) -> str | None:
    """The annotator a generated record imitates: its `target` field, else its `annotator` when that is an id."""
    target = record.get("target") or record.get("annotator")
    return target if target in ANNOTATORS else None


def read_generations(path: str | Path, items: Mapping[str, Item]) -> list[dict]:
    """The records of a generations.jsonl (`recipes/generate.py`), each checked where it stands (file:line, item,
    field), before any judging: its id is an item of the evaluation set (`items`); its `annotator` is a name, and a
    known annotator where it looks like an id (A9 is a typo, not a nameless source), as its `target` must be; it has
    `label` and `explanation` (null where the generation did not parse); and it is not a copy of an earlier row,
    which would count twice. Several different responses by one annotator to one item are kept: real annotators
    give them."""
    rows: list[dict] = []
    seen: dict[tuple, int] = {}
    for line, row in iter_jsonl(path):
        item_id = str(row.get("id"))
        where = {"path": str(path), "line": line, "item": item_id}
        if item_id not in items:
            raise DataError("generated record for an item not in the evaluation set", field="id", **where)
        name, target = row.get("annotator"), row.get("target")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"expected the record's annotator name, got {name!r}", field="annotator", **where)
        named = [("annotator", name)] if _ANNOTATOR_ID.fullmatch(name) else []
        for part, value in named + ([("target", target)] if target is not None else []):
            try:
                check_annotator(value)
            except DataError as err:
                raise err.at(field=part, **where) from None
        for part in ("label", "explanation"):
            if part not in row:
                raise DataError("missing field (null where the generation did not parse)", field=part, **where)
        key = (item_id, name, target, str(row["label"]), str(row["explanation"]))
        if key in seen:
            raise DataError(f"the same response by {name} as on line {seen[key]}: it would count twice",
                            field="annotator", **where)
        seen[key] = line
        rows.append(row)
    if not rows:
        raise DataError("no generation records in file", path=str(path))
    return rows


def generated_responses(records: Sequence[Mapping], items: Mapping[str, Item], label_space: LabelSpace
                        ) -> tuple[list[Response], int]:
    """Parsed generation records as responses (unparsed ones are counted, not used): (responses, unparsed).

    A response's annotator is the record's target (`target_of`), else its `annotator` name (e.g. "base")."""
    rows, unparsed = [], 0
    for number, record in enumerate(records, 1):
        item = items.get(str(record.get("id")))
        if item is None:
            raise DataError("generated record for an item not in the evaluation set", line=number,
                            item=str(record.get("id")), field="id")
        label, explanation = record.get("label"), str(record.get("explanation") or "").strip()
        try:
            label = label_space.normalise(label) if label is not None else None
        except ValueError:
            label = None
        if not record.get("parsed", True) or label is None or not explanation:
            unparsed += 1
            continue
        rows.append(Response(item.id, target_of(record) or str(record.get("annotator")), label, explanation, tuple(item.inputs.values())))
    return rows, unparsed


def style_stats(rows: Sequence[Response]) -> dict[str, float]:
    """Mean words per explanation; share with a hedge, with a negation; share of words copied from the input."""
    if not rows:
        return {"words": float("nan"), "hedging": float("nan"), "negation": float("nan"), "input_overlap": float("nan")}
    words = [_WORD.findall(r.explanation.lower().replace("n't", " not")) for r in rows]
    copied = []
    for r, ws in zip(rows, words):
        source = {w for text in r.inputs for w in _WORD.findall(text.lower())}
        copied.append(np.mean([w in source for w in ws]) if ws else 0.0)
    return {"words": float(np.mean([len(ws) for ws in words])),
            "hedging": float(np.mean([any(w in HEDGES for w in ws) for ws in words])),
            "negation": float(np.mean([any(w in NEGATIONS for w in ws) for ws in words])),
            "input_overlap": float(np.mean(copied))}


def label_distribution(rows: Sequence[Response], label_space: LabelSpace) -> np.ndarray:
    counts = Counter(r.label for r in rows)
    values = np.array([counts.get(label, 0) for label in label_space.labels], dtype=float)
    return values / values.sum() if values.sum() else np.full(len(label_space), 1 / len(label_space))


def group_attribution(log_proba: np.ndarray, rows: Sequence[Response], target: str, ks: Sequence[int], seed: int = 0,
                      classes: Sequence[str] = ANNOTATORS) -> list[dict]:
    """Share of groups of k responses (distinct items) that the judge attributes to `target`."""
    out = []
    for k in ks:
        true, pred = group_predictions(log_proba, [target] * len(rows), [r.item_id for r in rows], k,
                                       np.random.default_rng(seed), classes)
        acc, low, high = accuracy_interval(pred == list(classes).index(target), seed)
        out.append({"k": k, "groups": len(true), "recognised": acc, "ci_low": low, "ci_high": high})
    return out


def _basis(rows: Sequence[Response]) -> dict[str, int]:
    return {"items": len({r.item_id for r in rows}), "responses": len(rows)}


def on_items(real: Sequence[Response], generated: Sequence[Response]) -> list[Response]:
    """The real responses on the items `generated` covers (the items every imitation number is computed on)."""
    covered = {r.item_id for r in generated}
    return [r for r in real if r.item_id in covered]


def imitation_report(target: str, generated: Sequence[Response], real: Sequence[Response], judge, label_space: LabelSpace,
                     *, ks: Sequence[int] = (1, 2, 4, 8, 16), seed: int = 0, embeddings: bool = True) -> dict:
    """Every imitation measure for one target. `real` are all annotators' held-out responses; only those on the
    items `generated` covers are used (`on_items`), so the human ceiling, the label JS distances, the style and
    centroid comparisons rest on the same items as the generated set's attribution. `basis` records how many items
    and responses each rests on: `generated`, `human_ceiling` (the target's real responses on those items), `real`
    (each annotator's) and `item_label_agreement` (the generated responses on items the target answered)."""
    from scipy.spatial.distance import jensenshannon

    classes = list(judge.classes)
    real = on_items(real, generated)
    # Annotators with no real response on these items (a small or partial held-out set) are left out of the
    # comparisons against each annotator rather than compared with an empty set.
    real_of: dict[str, list[Response]] = {}
    for r in real:
        real_of.setdefault(r.annotator, []).append(r)
    present = [name for name in classes if name in real_of]
    target_real = real_of.get(target, [])
    if not generated or not target_real:
        raise DataError(f"target {target}: {len(generated)} generated and {len(target_real)} real held-out responses"
                        " on the generated items")
    report = {"target": target, "generated": len(generated),
              "attribution": group_attribution(judge.log_proba(generated), generated, target, ks, seed, classes),
              "human_ceiling": group_attribution(judge.log_proba(target_real), target_real, target, ks, seed, classes),
              "basis": {"generated": _basis(generated), "human_ceiling": _basis(target_real),
                        "real": {name: _basis(real_of[name]) for name in present}}}
    generated_labels = label_distribution(generated, label_space)
    report["label_js"] = {name: float(jensenshannon(label_distribution(real_of[name], label_space), generated_labels,
                                                    base=2))
                          for name in present}
    report["label_js_target"] = report["label_js"][target]
    target_labels = {}
    for r in target_real:
        target_labels.setdefault(r.item_id, set()).add(r.label)
    shared = [r for r in generated if r.item_id in target_labels]
    report["item_label_agreement"] = float(np.mean([r.label in target_labels[r.item_id] for r in shared])) if shared else float("nan")
    report["basis"]["item_label_agreement"] = _basis(shared)
    report["style"] = {"generated": style_stats(generated), **{name: style_stats(real_of[name]) for name in present}}
    if embeddings:
        centroid = embed([r.explanation for r in generated]).mean(axis=0)
        cosines = {}
        for name in present:
            c = embed([r.explanation for r in real_of[name]]).mean(axis=0)
            cosines[name] = float(centroid @ c / (np.linalg.norm(centroid) * np.linalg.norm(c)))
        report["centroid_cosine"] = cosines
        report["nearest_annotator"] = max(cosines, key=cosines.get)
    return report


def source_report(records: Sequence[Mapping], items: Mapping[str, Item], label_space: LabelSpace, judge,
                  real: Sequence[Response], *, ks: Sequence[int] = (1, 2, 4, 8, 16), seed: int = 0,
                  embeddings: bool = True) -> tuple[dict[str, dict], list[Response]]:
    """One generated source's records, grouped by target (`target_of`): (per-target rows, targeted responses).

    Each row, keyed by `str(target)` ("None" for the base model), has `generated` and `unparsed` counts and, when
    any record parsed, the judge's attribution shares (`attributed`) and, for a target, its `imitation_report`
    against `real` restricted to the items the target's generated responses cover. The targeted responses (every
    parsed response with a target) feed a confusion matrix."""
    by_target: dict[str | None, list[Mapping]] = {}
    for record in records:
        by_target.setdefault(target_of(record), []).append(record)
    per: dict[str, dict] = {}
    targeted: list[Response] = []
    for target, group in by_target.items():
        responses, unparsed = generated_responses(group, items, label_space)
        if not responses:
            per[str(target)] = {"generated": 0, "unparsed": unparsed}
            continue
        attributed = np.bincount(judge.log_proba(responses).argmax(axis=1),
                                 minlength=len(judge.classes)) / len(responses)
        row = {"generated": len(responses), "unparsed": unparsed,
               "attributed": dict(zip(judge.classes, attributed.round(4).tolist(), strict=True))}
        if target is not None:
            targeted.extend(responses)
            if any(r.annotator == target for r in on_items(real, responses)):
                row.update(imitation_report(target, responses, real, judge, label_space, ks=ks, seed=seed,
                                            embeddings=embeddings))
            else:  # nothing of the target's to imitate on these items (a small or partial held-out set)
                row["note"] = f"no real held-out response from {target} on these items"
        per[str(target)] = row
    return per, targeted


def judge_sources(judge, real: Sequence[Response], items: Mapping[str, Item], label_space: LabelSpace,
                  sources: Mapping[str, Sequence[Mapping]], *, ks: Sequence[int] = (1, 2, 4, 8, 16), seed: int = 0,
                  embeddings: bool = True, on_source: Callable[[], None] | None = None) -> dict:
    """The judge on all the real held-out responses (the sanity check) and on each generated source:
    {"human_heldout": judge_report, "heldout_items": how many items those rest on, "sources": {name:
    `source_report` rows, each target's human ceiling and label JS on the items its generated set covers},
    "confusion": {name: judge_report over the source's targeted responses}} (`run_imitation`'s report)."""
    result = {"human_heldout": judge_report(judge.log_proba(real), [r.annotator for r in real], seed=seed),
              "heldout_items": len({r.item_id for r in real}), "sources": {}, "confusion": {}}
    for name, records in sources.items():
        per, targeted = source_report(records, items, label_space, judge, real, ks=ks, seed=seed,
                                      embeddings=embeddings)
        result["sources"][name] = per
        if targeted:
            result["confusion"][name] = judge_report(judge.log_proba(targeted), [r.annotator for r in targeted],
                                                     seed=seed)
        if on_source:  # progress
            on_source()
    return result


@dataclass
class ImitationArguments:
    """Arguments of `eval/imitation.py` (a `TrlParser` dataclass; YAML config keys have the same names)."""

    task: str = field(default="nli", metadata={"choices": ("nli", "paraphrase")})
    dataset: str | None = field(default=None, metadata={"help": "varierr (nli default) or lewidi-ven / lewidi-par"})
    split_seed: int = 0
    generated: list[str] = field(default_factory=list, metadata=repeatable(
        "a generations.jsonl (repeatable)", metavar="NAME=PATH"))
    judge: str = field(default="trained", metadata={"choices": ("trained", "llm")})
    features: str = field(default="char", metadata={"choices": FEATURES, "help": "trained judge: its features"})
    judge_model: str | None = field(default=None, metadata={
        "help": "LLM judge: hub id or folder (e.g. models/smollm2-135m-instruct)"})
    judge_dtype: str = "float32"
    judge_examples: int = field(default=3, metadata={"help": "LLM judge: history examples per annotator"})
    limit: int | None = field(default=None, metadata={
        "help": "judge only the first N responses of each set (LLM judge cost)"})
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seed: int = 0
    no_embeddings: bool = field(default=False, metadata={"help": "skip the embedding-centroid measure"})
    judge_cache: str | None = field(default=None, metadata={
        "help": "LLM judge: keep its judgements in this JSON file; a rerun with the same model and settings reuses "
                "them (a killed run resumes)"})
    output: str | None = field(default=None, metadata={"help": "JSON report"})
    plots: str | None = field(default=None, metadata={"help": "folder for confusion-matrix PNGs"})

    def __post_init__(self) -> None:
        # Every value check happens here, while parsing: nothing is read or loaded before a bad value is refused.
        if self.judge == "llm" and not self.judge_model:
            raise DataError("the LLM judge needs a model", field="--judge_model")
        if self.limit is not None and self.limit < 1:
            raise DataError(f"limit must be at least 1, got {self.limit}", field="--limit")
        if any(k < 1 for k in self.ks):
            raise DataError(f"group sizes must be at least 1, got {self.ks}", field="--ks")
        self.sources()

    def sources(self) -> dict[str, str]:
        """Name -> generations.jsonl; the report is keyed by name, so a name given twice is refused."""
        return named_values(self.generated, "--generated")


def run_imitation(args: ImitationArguments) -> dict:
    """`eval/imitation.py`: the judge (trained on the annotators' training histories, or an LLM) on the real held-out
    responses and on every generated set (`judge_sources`), a few lines on stdout, the confusion plots, and the
    report written to `args.output`. The judge model and the outputs are checked, and every generated row read,
    before any judging."""
    if args.judge == "llm":
        check_model_path(args.judge_model)
    if args.output:
        check_output(args.output)
    if args.plots:
        check_output(args.plots, folder=True)
    space = label_space(args.task)
    start = time.perf_counter()
    history, heldout, heldout_items = histories_and_heldout(args.task, args.dataset, args.split_seed)
    items = {item.id: item for item in heldout_items}
    records = {name: read_generations(path, items) for name, path in args.sources().items()}
    if args.judge == "llm":
        judge = llm_judge(args.judge_model, history, dtype=args.judge_dtype, per_annotator=args.judge_examples,
                          seed=args.seed, cache=args.judge_cache)
    else:
        judge = TrainedJudge(args.features, with_label=True, seed=args.seed).fit(history)
    if args.limit:
        heldout = heldout[: args.limit]
        records = {name: rows[: args.limit] for name, rows in records.items()}
    judged = judge_sources(judge, heldout, items, space, records, ks=args.ks, seed=args.seed,
                           embeddings=not args.no_embeddings)
    report = {"task": args.task, "judge": args.judge, "judge_model": args.judge_model, "features": args.features,
              "split_seed": args.split_seed, "seed": args.seed, "judge_history": len(history), **judged}
    print("\n".join(summary_lines(report)))
    if args.plots:
        tag = args.task if args.judge == "trained" else f"{args.task}_llm"
        human = judged["human_heldout"]
        plots = [("human", human, "human held-out"), *((name, rep, name) for name, rep in judged["confusion"].items())]
        for name, rep, title in plots:
            confusion_plot(rep, Path(args.plots) / f"confusion_{tag}_{name}.png", f"{title}: acc {rep['accuracy']:.2f}")
    # the wall time is said, not written: the same command writes the same file
    print(f"judged in {time.perf_counter() - start:.1f} s")
    if args.output:
        write_json(args.output, report)
    return report


def summary_lines(report: dict) -> list[str]:
    """The judge's human held-out accuracy, then one line per generated set and target."""
    human = report["human_heldout"]
    lines = [(f"{report['judge']} judge on {report['judge_history']} history responses; human held-out accuracy "
              f"{human['accuracy']:.3f} [{human['ci_low']:.3f}, {human['ci_high']:.3f}] "
              f"(chance {human['chance']:.2f})")]
    for name, entry in report["sources"].items():
        for target, row in entry.items():
            if "attributed" not in row:
                continue
            unparsed = row["unparsed"]
            if "note" in row:
                lines.append(f"{name} {target}: {row['note']}, unparsed {unparsed}")
            elif "target" in row:
                single = row["attribution"][0]
                lines.append(f"{name} {target}: recognised {single['recognised']:.3f} (k={single['k']}), label JS "
                             f"{row['label_js_target']:.3f}, item agreement {row['item_label_agreement']:.3f}, "
                             f"unparsed {unparsed}")
            else:
                lines.append(f"{name} (no target): attributed {row['attributed']}, unparsed {unparsed}")
    return lines
