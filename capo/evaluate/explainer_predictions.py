"""LLM explainers as annotators: each annotator's label probabilities from their explainer, for LeWiDi 2025
per-annotator predictions and for the explainer jury (the explainers' probabilities averaged into one distribution).

The prompt is the explainer's own (`capo.data.prompts.prompt_messages` rendered with the generation prompt, as SFT
and generation render it) followed by the opening of its response, `Label:`; every label option is `" " + label`
after it (SFT rows tokenize `Label: entailment` as `Label`, `:`, ` entail`, `ment`), scored exactly by
`capo.generate.scoring.label_log_probs` (the chain rule through the one scoring engine) and softmaxed over the task's
labels. Which model scores an annotator (`Explainers`): their own adapter (a folder template with `{annotator}`),
one conditioned adapter with the annotator's id in the prompt (a template without `{annotator}`, trained with
`--annotator all`), or the base model alone (no template: the same prompt and probabilities for every annotator).
Templates take `{task}` (nli / paraphrase) and `{annotator}` (A1..A4; LeWiDi's Ann1..Ann4 are the same people).

LeWiDi (`predict_lewidi`, `eval/lewidi.py predict --model`): VEN per-label probabilities in the official order
(contradiction, entailment, neutral), a label predicted above a threshold (several, or none, where the probabilities
allow); Par the 11 Likert probabilities, the label by argmax, rounded expectation or median. The threshold / rule is
the one `capo.evaluate.perspectivist.choose_on_dev` finds best on a labelled decision split (dev), or a fixed one;
no scored item's own labels shape its decision (`capo.evaluate.perspectivist.fit_decisions`): the decision split's
own items are scored cross-fitted (each item fold with the decision fitted on the other folds), another split's
items with the decision fitted on all of the decision split.
Adapters must not have trained on the evaluated or the decision split's items (`capo.data.heldout.check_heldout`
against their run manifests): for LeWiDi that means adapters trained on LeWiDi's own train split
(`recipes/sft.py --dataset lewidi-ven` / `lewidi-par`), never on VariErr split seed 0 (42 of the 50 VEN test items).
An adapter without a run manifest cannot be checked and is refused, in LeWiDi prediction and in the jury alike,
unless `allow_unchecked_adapters` (`--allow_unchecked_adapters true`); the report then names it (`unchecked_adapters`).

Jury (`run_jury`, `eval/jury.py`): the annotators' probabilities averaged per item, written as a distribution file
(`{"id", "distribution"}`, label-space order: [entailment, neutral, contradiction] for NLI) that
`eval/distributions.py --model` compares with the ChaosNLI HJD; how many items any explainer trained on is reported
(an explainer without a run manifest is refused, as above: its training items could be neither counted nor left out).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capo.data.lewidi import PAR_LABELS, VEN_LABELS, LewidiItem, check_dataset, lewidi_split_path, read_lewidi
from capo.data.prompts import prompt_messages, render_chat
from capo.data.schema import ANNOTATORS, NLI, TASK_INPUTS, Item, label_space
from capo.errors import DataError

LEWIDI_TASK: dict[str, str] = {"ven": "nli", "par": "paraphrase"}
ANSWER_LEAD = "Label:"  # the response's opening (`render_response`); each label follows it after one space
KINDS = ("explainer", "conditioned", "base")


# --- prompts and items -----------------------------------------------------------------------------------------


def capo_annotator(name: str) -> str:
    """LeWiDi `Ann2` -> capo `A2` (capo ids pass through)."""
    canonical = "A" + name[3:] if name.startswith("Ann") else name
    if canonical not in ANNOTATORS:
        raise DataError(f"unknown annotator {name!r} (valid: Ann1-Ann4 or A1-A4)", field="annotator")
    return canonical


def capo_item(item: LewidiItem) -> Item:
    """A LeWiDi item as the explainers' prompts and training records know it: VEN under its VariErr id (the id the
    adapters' run manifests record), Par under its LeWiDi key; no annotations (the split may be label-less)."""
    from capo.data.loaders import nli_item_id

    task = LEWIDI_TASK[item.dataset]
    inputs = dict(zip(TASK_INPUTS[task], item.inputs))
    item_id = nli_item_id(*item.inputs) if task == "nli" else item.id
    return Item(id=item_id, task=task, inputs=inputs, meta={"lewidi_id": item.id})


def label_options(task: str) -> list[str]:
    """The label texts scored after `ANSWER_LEAD`, in label-space order."""
    return [" " + label for label in label_space(task).labels]


def scoring_prompt(tokenizer, item: Item, persona: str | None = None) -> str:
    """The explainer's prompt for `item` (as `persona` for a conditioned adapter), ending where its label starts."""
    return render_chat(tokenizer, prompt_messages(item, annotator=persona)) + ANSWER_LEAD


# --- which model scores each annotator -------------------------------------------------------------------------


@dataclass(frozen=True)
class Explainers:
    """kind `explainer`: adapter name = the annotator (A1..A4); `conditioned`: one adapter "all", the annotator's
    id in the prompt; `base`: no adapter. `folders`: adapter name -> folder."""

    kind: str
    folders: dict[str, str]

    def adapter(self, annotator: str) -> str | None:
        return {"explainer": annotator, "conditioned": "all", "base": None}[self.kind]

    def persona(self, annotator: str) -> str | None:
        return annotator if self.kind == "conditioned" else None

    def names(self) -> dict[str, str]:
        """name -> folder, as `capo.data.heldout` names adapters in its messages."""
        return {f"{self.kind} {name}": folder for name, folder in self.folders.items()}


def resolve_explainers(template: str | None, task: str, annotators: Sequence[str]) -> Explainers:
    """The folders a template names for `annotators` (capo ids), each checked to be an adapter folder."""
    from capo.io import check_model_path

    if not template:
        return Explainers("base", {})
    kind = "explainer" if "{annotator}" in template else "conditioned"
    try:
        folders = ({a: template.format(task=task, annotator=a) for a in annotators} if kind == "explainer"
                   else {"all": template.format(task=task)})
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(f"bad template {template!r}: use {{task}} and {{annotator}} ({err})",
                        field="explainers") from None
    for folder in folders.values():
        check_model_path(folder, kind="adapter")  # a folder, with its weights (`capo.io.check_adapter_weights`)
    return Explainers(kind, folders)


def check_unchecked(explainers: Explainers, allow: bool = False, log: Callable[[str], None] = print) -> dict[str, str]:
    """Refuse (one line naming the folder) an adapter without a run manifest, whose training items are unknown,
    unless `allow`; returns those adapters (name -> folder) for the report (`capo.data.heldout.unchecked_adapters`)."""
    from capo.data.heldout import unchecked_adapters

    return unchecked_adapters(explainers.names(), allow=allow, log=log)


def check_not_trained_on(items: Sequence[Item], explainers: Explainers, what: str,
                         log: Callable[[str], None] = print, *, allow_unchecked: bool = False) -> dict[str, str]:
    """Refuse (one line naming the adapter's manifest and field) an adapter whose run manifest says it trained on
    any of `items` (`capo.data.heldout.check_heldout`, one adapter at a time so the error names the folder), and an
    adapter without a run manifest unless `allow_unchecked`; returns the latter (name -> folder)."""
    from capo.data.heldout import MANIFEST, RECORD, check_heldout

    unchecked = check_unchecked(explainers, allow_unchecked, log)
    for name, folder in explainers.names().items():
        if name in unchecked:
            continue
        try:
            check_heldout(items, {name: folder}, log=log)
        except DataError as err:
            raise DataError(f"{err.message}; {what}", path=err.path or str(Path(folder) / MANIFEST),
                            field=err.field or f"{RECORD}.item_ids") from None
    return unchecked


def training_overlap(items: Sequence[Item], explainers: Explainers) -> dict:
    """How many of `items` each adapter trained on (its run manifest; None: no manifest, unknown), and how many any
    of them did; `ids`: those items' ids."""
    from capo.data.heldout import read_manifest, training_items

    ids = {item.id for item in items}
    per, seen = {}, set()
    for name, folder in explainers.folders.items():
        manifest = read_manifest(folder)
        if manifest is None:
            per[name] = None
            continue
        overlap = ids & training_items(manifest)
        per[name], seen = len(overlap), seen | overlap
    return {"items": len(ids), "in_training": len(seen), "per_adapter": per,
            "unchecked": sorted(n for n, v in per.items() if v is None), "ids": sorted(seen)}


# --- scoring ---------------------------------------------------------------------------------------------------


class LabelScorer:
    """A base model with the explainers' adapters loaded on it (one `HFBackend`), scoring label probabilities."""

    def __init__(self, model: str, explainers: Explainers, *, dtype: str = "float32", batch_size: int = 16,
                 min_shared_tokens: int | None = 16) -> None:
        from capo.generate.backends.hf import HFBackend

        self.explainers = explainers
        self.backend = HFBackend(model, explainers.folders, dtype=dtype, batch_size=batch_size,
                                 min_shared_tokens=min_shared_tokens or None)  # 0 or None: no prefix reuse
        self.tokenizer = self.backend.tokenizer

    def probabilities(self, jobs: Sequence[tuple[Item, str]]) -> np.ndarray:
        """P(label | item, annotator) for each (item, capo annotator), shape (jobs, labels), label-space order: the
        label log-probabilities under the annotator's model, softmaxed over the labels."""
        from scipy.special import softmax

        from capo.generate.scoring import label_log_probs

        tasks = {item.task for item, _ in jobs}
        if len(tasks) > 1:
            raise DataError(f"items of several tasks ({', '.join(sorted(tasks))}) in one scoring call")
        if not jobs:
            return np.zeros((0, 0))
        options = label_options(tasks.pop())
        by_adapter: dict[str | None, list[int]] = {}
        for k, (_, annotator) in enumerate(jobs):
            by_adapter.setdefault(self.explainers.adapter(annotator), []).append(k)
        logp = np.zeros((len(jobs), len(options)))
        for adapter, rows in by_adapter.items():  # one engine pass per adapter: identical prompts are scored once
            prompts = [scoring_prompt(self.tokenizer, jobs[k][0], self.explainers.persona(jobs[k][1])) for k in rows]
            logp[rows] = label_log_probs(self.backend.scorer, self.tokenizer, prompts, options, adapter)
        return softmax(logp, axis=1)


# --- LeWiDi ----------------------------------------------------------------------------------------------------


def lewidi_rows(items: Sequence[LewidiItem]) -> list[dict]:
    """One row per (item, annotator) in split order, as `capo.evaluate.perspectivist.decide` reads them."""
    return [{"id": item.id, "annotator": a} for item in items for a in item.annotators]


def lewidi_probabilities(scorer: LabelScorer, items: Sequence[LewidiItem]) -> tuple[list[dict], np.ndarray]:
    """(rows, probabilities) for every (item, annotator): VEN in VEN_LABELS order (not capo's [E, N, C]), Par -5..5."""
    rows = lewidi_rows(items)
    converted = {item.id: capo_item(item) for item in items}
    probs = scorer.probabilities([(converted[r["id"]], capo_annotator(r["annotator"])) for r in rows])
    if items and items[0].dataset == "ven":
        probs = probs[:, [NLI.labels.index(label) for label in VEN_LABELS]]
    return rows, probs


def parse_decision(decision: str, dataset: str):
    """"dev" (chosen on the decision split), a VEN threshold strictly between 0 and 1, or a Par rule."""
    from capo.evaluate.perspectivist import PAR_DECISIONS

    if decision == "dev":
        return decision
    if dataset == "par":
        if decision not in PAR_DECISIONS:
            raise DataError(f"unknown value {decision!r} (valid: dev, {', '.join(PAR_DECISIONS)})", field="decision")
        return decision
    try:
        value = float(decision)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise DataError(f"expected dev or a threshold strictly between 0 and 1, got {decision!r}", field="decision")
    return value


def output_paths(output: str, soft: str | None, soft_mean: str | None, probs: str | None) -> dict[str, str]:
    """The four files a model predictor writes; unnamed ones go beside `output` (`P.jsonl` -> `P_soft.jsonl`, ...)."""
    stem = Path(output)
    base = stem.with_suffix("") if stem.suffix == ".jsonl" else stem
    derive = lambda tag: f"{base}_{tag}.jsonl"
    return {"predictions": output, "soft": soft or derive("soft"), "soft_mean": soft_mean or derive("soft_mean"),
            "probs": probs or derive("probs")}


def predict_lewidi(
    dataset: str,
    split: str,
    output: str,
    *,
    model: str,
    explainers: str | None = None,
    decision: str = "dev",
    decision_split: str = "dev",
    decision_folds: int | None = None,
    soft_output: str | None = None,
    soft_mean_output: str | None = None,
    probs_output: str | None = None,
    dtype: str = "float32",
    batch_size: int = 16,
    min_shared_tokens: int | None = 16,
    allow_unchecked_adapters: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Per-annotator predictions for every (item, annotator) of `split` from explainers (or the base model), the
    decision fitted on `decision_split` (for the decision split's own items cross-fitted over `decision_folds`
    item folds, default `DECISION_FOLDS`: no item's labels shape its own decision); writes predictions, organiser-aggregated soft labels, mean-probability soft
    labels and per-row probabilities (official label order). Everything is checked before the model loads."""
    from capo.evaluate.lewidi import (
        aggregate_soft,
        score,
        write_annotator_predictions,
        write_soft_predictions,
    )
    from capo.evaluate.perspectivist import DECISION_FOLDS, decide_per_item, fit_decisions, mean_soft
    from capo.generate.backends.base import check_dtype
    from capo.io import check_model_path, check_output, write_jsonl
    from capo.train.corpus_lm import pretraining_item_ids

    dataset = check_dataset(dataset)
    task = LEWIDI_TASK[dataset]
    fixed = parse_decision(decision, dataset)
    check_dtype(dtype)
    items = read_lewidi(lewidi_split_path(dataset, split), dataset)
    dev_path = lewidi_split_path(dataset, decision_split)
    same = dev_path.resolve() == lewidi_split_path(dataset, split).resolve()
    dev_items = items if same else read_lewidi(dev_path, dataset)
    if fixed == "dev" and not all(item.labelled for item in dev_items):
        raise DataError("the decision split has no labels: the decision is fitted on it (give a labelled "
                        "--decision_split, or a fixed --decision)", path=str(dev_path), field="decision_split")
    if fixed == "dev" and len(dev_items) < 2 and {i.id for i in items} & {i.id for i in dev_items}:
        raise DataError("the decision is cross-fitted over the decision split's items: it needs at least 2",
                        path=str(dev_path), field="decision_split")
    paths = output_paths(output, soft_output, soft_mean_output, probs_output)
    for path in paths.values():
        check_output(path)
    if len(set(paths.values())) != len(paths):
        raise DataError("two outputs name the same file", field="output")
    check_model_path(model)
    annotators = sorted({capo_annotator(a) for item in [*items, *dev_items] for a in item.annotators})
    chosen = resolve_explainers(explainers, task, annotators)
    evaluated = [capo_item(item) for item in items] + ([] if same or fixed != "dev" else
                                                        [capo_item(item) for item in dev_items])
    # An adapter without a run manifest is refused here unless allow_unchecked_adapters; the report names it.
    unchecked = check_not_trained_on(evaluated, chosen, "score LeWiDi with adapters trained on LeWiDi's own train "
                                     f"split (recipes/sft.py --dataset lewidi-{dataset})", log=log,
                                     allow_unchecked=allow_unchecked_adapters)

    # Said, not refused: a corpus LM pre-trained on VariErr explanations is a base model like any other here.
    pretrained = {item.id for item in evaluated} & pretraining_item_ids(model)
    if pretrained:
        log(f"{len(pretrained)} of the {len(evaluated)} evaluated items are in the base model's pre-training corpus")
    scorer = LabelScorer(model, chosen, dtype=dtype, batch_size=batch_size, min_shared_tokens=min_shared_tokens)
    report: dict = {"dataset": dataset, "split": split, "model": model, "predictor": chosen.kind,
                    "explainers": chosen.folders, "n_items": len(items), "in_base_pretraining": len(pretrained),
                    "unchecked_adapters": unchecked}
    rows, probs = lewidi_probabilities(scorer, items)
    if fixed == "dev":
        # No scored item's own labels shape its decision: the decision split's items get the decision cross-fitted
        # over its item folds, the items of another split the one fitted on all of it (`fit_decisions`).
        dev_rows, dev_probs = (rows, probs) if same else lewidi_probabilities(scorer, dev_items)
        choices, fitted = fit_decisions(items, dev_items, dev_rows, dev_probs, dataset, split=decision_split,
                                        folds=decision_folds or DECISION_FOLDS)
        report.update(decision_split=decision_split, **fitted)
        log(f"decision: {'threshold' if dataset == 'ven' else 'rule'} {fitted['decision']} (best on "
            f"{decision_split}); {split}: {fitted['decision_fit']}")
    else:
        choices = {item.id: fixed for item in items}
        report.update(decision=fixed, decision_source="fixed", decision_fit="fixed")
    predictions = decide_per_item(rows, probs, dataset, choices)
    soft, soft_mean = aggregate_soft(items, predictions), mean_soft(items, rows, probs)
    report.update(n_pairs=len(rows))
    if all(item.labelled for item in items):
        report["scores"] = score(items, predictions, soft)
        report["soft_mean"] = score(items, None, soft_mean)["soft"]
    write_annotator_predictions(paths["predictions"], predictions, dataset)
    write_soft_predictions(paths["soft"], soft)
    write_soft_predictions(paths["soft_mean"], soft_mean)
    labels = list(VEN_LABELS if dataset == "ven" else PAR_LABELS)
    write_jsonl(paths["probs"], ({"id": r["id"], "annotator": r["annotator"], "labels": labels,
                                  "probs": [round(float(x), 6) for x in p]} for r, p in zip(rows, probs)))
    report["outputs"] = paths
    return report


# --- the explainer jury ----------------------------------------------------------------------------------------


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
    from capo.data.loaders import load_dataset, write_distributions
    from capo.data.schema import check_annotator
    from capo.generate.backends.base import check_dtype
    from capo.io import check_model_path, check_output
    from capo.train.corpus_lm import pretraining_item_ids

    check_dtype(dtype)
    annotators = list(dict.fromkeys(check_annotator(a) for a in annotators))
    if not annotators:
        raise DataError("no annotators", field="annotators")
    for path in (output, human_output):
        if path:
            check_output(path)
    if human_output and Path(human_output).resolve() == Path(output).resolve():
        raise DataError("the jury and the human file are the same file", field="human_output")
    items = load_dataset(dataset)
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
