"""The explainer jury: the annotators' label probabilities under their explainers
(`capo.generate.labels.LabelScorer`) averaged per item into one distribution, written as a distribution file
(`{"id", "distribution"}`, label-space order: [entailment, neutral, contradiction] for NLI) that
`eval/distributions.py --model` compares with the ChaosNLI HJD like an MJD. How many items any explainer trained on
is reported (an explainer without a run manifest is refused unless `allow_unchecked_adapters`: its training items
could be neither counted nor left out).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from capo.data.schema import ANNOTATORS, Item, label_space
from capo.errors import DataError
from capo.generate.labels import LabelScorer, check_unchecked, resolve_explainers, training_overlap


def jury_distributions(scorer: LabelScorer, items: Sequence[Item], annotators: Sequence[str]) -> dict[str, list[float]]:
    """item id -> the mean of the annotators' label probabilities (label-space order)."""
    jobs = [(item, a) for item in items for a in annotators]
    probs = scorer.probabilities(jobs).reshape(len(items), len(annotators), -1)
    return {item.id: probs[k].mean(axis=0).tolist() for k, item in enumerate(items)}


def run_jury(
    model: str,
    output: str,
    *,
    explainers: str | None = None,
    annotators: Sequence[str] = ANNOTATORS,
    dataset: str = "nli341",
    heldout_only: bool = False,
    exclude_pretrained: bool = False,
    human_output: str | None = None,
    dtype: str = "float32",
    batch_size: int = 16,
    min_shared_tokens: int | None = 16,
    allow_unchecked_adapters: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """The explainer jury's distribution for every item of `dataset` (default the 341 ChaosNLI items), written to
    `output`; with `human_output`, the same items' ChaosNLI HJD beside it. Reports how many items the explainers
    trained on (run manifests) and the base model was pre-trained on (a corpus LM); `heldout_only` leaves out the
    former, `exclude_pretrained` the latter. An explainer without a run manifest is refused (what it trained on can
    be neither counted nor left out) unless `allow_unchecked_adapters`, when the report names it."""
    from capo.data.distributions import write_distributions
    from capo.data.registry import load_items
    from capo.data.schema import check_annotator
    from capo.generate.backends.base import check_dtype
    from capo.io import check_model_path, check_output
    from capo.models.corpus_lm import pretraining_item_ids

    check_dtype(dtype)
    annotators = list(dict.fromkeys(check_annotator(a) for a in annotators))
    if not annotators:
        raise DataError("no annotators", field="annotators")
    for path in (output, human_output):
        if path:
            check_output(path)
    if human_output and Path(human_output).resolve() == Path(output).resolve():
        raise DataError("the jury and the human file are the same file", field="human_output")
    items = load_items(dataset)
    tasks = {item.task for item in items}
    if len(tasks) != 1:
        raise DataError(f"the jury needs items of one task, found {', '.join(sorted(tasks)) or 'none'}",
                        path=dataset)
    duplicate = next((i for i, n in Counter(item.id for item in items).items() if n > 1), None)
    if duplicate is not None:
        raise DataError("duplicate item id: distributions could not be told apart", path=dataset, item=duplicate)
    check_model_path(model)
    task = tasks.pop()
    chosen = resolve_explainers(explainers, task, annotators)
    unchecked_folders = check_unchecked(chosen, allow_unchecked_adapters, log)  # before the model loads
    overlap = training_overlap(items, chosen)
    unchecked = f" ({', '.join(overlap['unchecked'])} without a run manifest: not counted)" if overlap["unchecked"] else ""
    log(f"{overlap['in_training']} of {len(items)} items are in the explainers' training data{unchecked}")
    if heldout_only and unchecked_folders:
        log("--heldout_only leaves out only what the explainers with a run manifest trained on")
    pretrained = {item.id for item in items} & pretraining_item_ids(model)
    if pretrained:
        log(f"{len(pretrained)} of {len(items)} items are in the base model's pre-training corpus")
    left_out = (set(overlap["ids"]) if heldout_only else set()) | (pretrained if exclude_pretrained else set())
    if left_out:
        items = [item for item in items if item.id not in left_out]
        log(f"leaving out {len(left_out)} items; {len(items)} left")
        if not items:
            raise DataError("no items left: every item was trained on", field="heldout_only")
    if human_output:
        from capo.mjd.run import write_human

        missing = next((item.id for item in items if "chaosnli" not in item.distributions), None)
        if missing is not None:  # before the model loads
            raise DataError("no 'chaosnli' distribution for --human_output", path=dataset, item=missing)
    scorer = LabelScorer(model, chosen, dtype=dtype, batch_size=batch_size, min_shared_tokens=min_shared_tokens)
    distributions = jury_distributions(scorer, items, annotators)
    write_distributions(output, distributions)
    if human_output:
        write_human(human_output, items)
    return {"dataset": dataset, "model": model, "predictor": chosen.kind, "explainers": chosen.folders,
            "annotators": annotators, "items": len(items), "labels": list(label_space(task).labels),
            "in_training": overlap["in_training"], "in_training_per_adapter": overlap["per_adapter"],
            "in_base_pretraining": len(pretrained), "heldout_only": heldout_only,
            "exclude_pretrained": exclude_pretrained, "output": output, "human_output": human_output,
            "unchecked_adapters": unchecked_folders}
