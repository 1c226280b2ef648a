"""The explainer jury: the annotators' label probabilities under their explainers
(`capo.generate.labels.LabelScorer`) averaged per item into one distribution, written as a distribution file
(`{"id", "distribution"}`, label-space order: [entailment, neutral, contradiction] for NLI) that
`eval/distributions.py --model` compares with the ChaosNLI HJD like an MJD, beside the constant predictors on the
same items (`uniform`; `label_prior`, the mean ChaosNLI-dev HJD: `capo.evaluate.distributions.compare`). How many
items any explainer trained on is reported (an explainer without a run manifest is refused unless
`allow_unchecked_adapters`: its training items could be neither counted nor left out). `run_jury` is what
`eval/jury.py` runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from capo.data.schema import ANNOTATORS, Item, label_space
from capo.errors import DataError
from capo.generate.labels import LabelScorer, check_unchecked, resolve_explainers, training_overlap


def jury_distributions(scorer: LabelScorer, items: Sequence[Item], annotators: Sequence[str]) -> dict[str, list[float]]:
    """item id -> the mean of the annotators' label probabilities (label-space order)."""
    jobs = [(item, a) for item in items for a in annotators]
    probs = scorer.probabilities(jobs).reshape(len(items), len(annotators), -1)
    return {item.id: probs[k].mean(axis=0).tolist() for k, item in enumerate(items)}


@dataclass
class JuryArguments:
    """Arguments of `eval/jury.py`."""

    model: str = field(metadata={"help": "base model (hub id or folder)"})
    output: str = field(metadata={"help": "jury distribution JSONL to write"})
    explainers: str | None = field(default=None, metadata={
        "help": "adapter folder template with {task} (nli) and {annotator} (A1..A4), e.g. runs/sft/{task}/{annotator}; "
                "without {annotator}: one conditioned adapter; omitted: the base model alone"})
    annotators: list[str] = field(default_factory=lambda: list(ANNOTATORS), metadata={"help": "the jury's members"})
    dataset: str = field(default="nli341", metadata={
        "help": "a shipped data set name or a file (default: the 341 ChaosNLI items)"})
    heldout_only: bool = field(default=False, metadata={"help": "true: leave out items an explainer trained on"})
    exclude_pretrained: bool = field(default=False, metadata={
        "help": "true: leave out items the base corpus LM was pre-trained on (their count is reported)"})
    human_output: str | None = field(default=None, metadata={
        "help": "also write the same items' ChaosNLI HJD (for eval/distributions.py)"})
    allow_unchecked_adapters: bool = field(default=False, metadata={
        "help": "true: use explainers without a run manifest (their training items are neither counted nor left "
                "out; the report names them)"})
    report: str | None = field(default=None, metadata={"help": "also write the report as JSON"})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16, float16 or auto"})
    batch_size: int = 16
    min_shared_tokens: int = field(default=16, metadata={
        "help": "shortest prompt prefix the scorer's KV cache shares (0: every prompt scored whole)"})


def run_jury(args: JuryArguments, log: Callable[[str], None] = print) -> dict:
    """The explainer jury's distribution for every item of `args.dataset` (default the 341 ChaosNLI items), written
    to `args.output`; with `human_output`, the same items' ChaosNLI HJD beside it; with `report`, the report as JSON.
    The report counts the data set's items the explainers trained on (run manifests: `in_training`) and the base model
    was pre-trained on (a corpus LM: `in_base_pretraining`); `heldout_only` leaves out the former,
    `exclude_pretrained` the latter (`left_out` of them), and `output_in_training` / `output_in_base_pretraining`
    count those among the items written. An explainer without a run manifest is refused (what it trained on can be
    neither counted nor left out) unless `allow_unchecked_adapters`, when the report names it."""
    from capo.data.distributions import write_distributions
    from capo.data.registry import load_items
    from capo.data.schema import check_annotator
    from capo.generate.backends.base import check_dtype
    from capo.io import check_model_path, check_output, write_json
    from capo.models.corpus_lm import pretraining_item_ids

    check_dtype(args.dtype)
    annotators = list(dict.fromkeys(check_annotator(a) for a in args.annotators))
    if not annotators:
        raise DataError("no annotators", field="annotators")
    for path in (args.output, args.human_output, args.report):
        if path:
            check_output(path)
    if args.human_output and Path(args.human_output).resolve() == Path(args.output).resolve():
        raise DataError("the jury and the human file are the same file", field="human_output")
    items = load_items(args.dataset)
    tasks = {item.task for item in items}
    if len(tasks) != 1:
        raise DataError(f"the jury needs items of one task, found {', '.join(sorted(tasks)) or 'none'}",
                        path=args.dataset)
    duplicate = next((i for i, n in Counter(item.id for item in items).items() if n > 1), None)
    if duplicate is not None:
        raise DataError("duplicate item id: distributions could not be told apart", path=args.dataset,
                        item=duplicate)
    check_model_path(args.model)
    task = tasks.pop()
    chosen = resolve_explainers(args.explainers, task, annotators)
    unchecked_folders = check_unchecked(chosen, args.allow_unchecked_adapters, log)  # before the model loads
    overlap = training_overlap(items, chosen)
    unchecked = f" ({', '.join(overlap['unchecked'])} without a run manifest: not counted)" if overlap["unchecked"] else ""
    log(f"{overlap['in_training']} of {len(items)} items are in the explainers' training data{unchecked}")
    if args.heldout_only and unchecked_folders:
        log("--heldout_only leaves out only what the explainers with a run manifest trained on")
    pretrained = {item.id for item in items} & pretraining_item_ids(args.model)
    if pretrained:
        log(f"{len(pretrained)} of {len(items)} items are in the base model's pre-training corpus")
    left_out = ((set(overlap["ids"]) if args.heldout_only else set())
                | (pretrained if args.exclude_pretrained else set()))
    if left_out:
        items = [item for item in items if item.id not in left_out]
        log(f"leaving out {len(left_out)} items; {len(items)} left")
        if not items:
            raise DataError("no items left: every item was trained on", field="heldout_only")
    if args.human_output:
        from capo.mjd.run import write_human

        missing = next((item.id for item in items if "chaosnli" not in item.distributions), None)
        if missing is not None:  # before the model loads
            raise DataError("no 'chaosnli' distribution for --human_output", path=args.dataset, item=missing)
    scorer = LabelScorer(args.model, chosen, dtype=args.dtype, batch_size=args.batch_size,
                         min_shared_tokens=args.min_shared_tokens)
    distributions = jury_distributions(scorer, items, annotators)
    write_distributions(args.output, distributions)
    if args.human_output:
        write_human(args.human_output, items)
    kept = {item.id for item in items}
    report = {"dataset": args.dataset, "model": args.model, "predictor": chosen.kind, "explainers": chosen.folders,
              "annotators": annotators, "items": len(items), "labels": list(label_space(task).labels),
              "in_training": overlap["in_training"], "in_training_per_adapter": overlap["per_adapter"],
              "in_base_pretraining": len(pretrained), "heldout_only": args.heldout_only,
              "exclude_pretrained": args.exclude_pretrained, "left_out": len(left_out),
              "output_in_training": len(kept & set(overlap["ids"])), "output_in_base_pretraining": len(kept & pretrained),
              "output": args.output, "human_output": args.human_output, "unchecked_adapters": unchecked_folders}
    if args.report:
        write_json(args.report, report)
    return report
