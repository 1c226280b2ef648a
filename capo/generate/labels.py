"""Label probabilities from explainers: each annotator's P(label | item) under their explainer, the one
label-scoring engine for LeWiDi predictions (`capo.lewidi.explainers`) and the explainer jury
(`capo.evaluate.distributions.jury`).

The prompt is the explainer's own (`capo.data.prompts.prompt_messages` rendered with the generation prompt, as SFT
and generation render it) followed by the opening of its response, `Label:`; every label option is `" " + label`
after it (SFT rows tokenize `Label: entailment` as `Label`, `:`, ` entail`, `ment`), scored exactly by
`capo.generate.scoring.label_log_probs` (the chain rule through the one scoring engine) and softmaxed over the task's
labels. Which model scores an annotator (`Explainers`): their own adapter (a folder template with `{annotator}`),
one conditioned adapter with the annotator's id in the prompt (a template without `{annotator}`, trained with
`--annotator all`), or the base model alone (no template: the same prompt and probabilities for every annotator).
Templates take `{task}` (nli / paraphrase) and `{annotator}` (A1..A4).
Adapters are checked against their run manifests before any model loads (`check_not_trained_on`); an adapter
without a run manifest is refused unless `allow_unchecked_adapters`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capo.data.prompts import prompt_messages, render_chat
from capo.data.schema import Item, label_space
from capo.errors import DataError

ANSWER_LEAD = "Label:"  # the response's opening (`render_response`); each label follows it after one space
KINDS = ("explainer", "conditioned", "base")


def label_options(task: str) -> list[str]:
    """The label texts scored after `ANSWER_LEAD`, in label-space order."""
    return [" " + label for label in label_space(task).labels]


def scoring_prompt(tokenizer, item: Item, persona: str | None = None) -> str:
    """The explainer's prompt for `item` (as `persona` for a conditioned adapter), ending where its label starts."""
    return render_chat(tokenizer, prompt_messages(item, annotator=persona)) + ANSWER_LEAD


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


class LabelScorer:
    """A base model with the explainers' adapters loaded on it (one `HFBackend`, on `device`: None for
    `capo.precision.resolve_device`), scoring label probabilities."""

    def __init__(self, model: str, explainers: Explainers, *, dtype: str = "float32", batch_size: int = 16,
                 min_shared_tokens: int | None = 16, device=None) -> None:
        from capo.generate.backends.hf import HFBackend

        self.explainers = explainers
        self.backend = HFBackend(model, explainers.folders, dtype=dtype, batch_size=batch_size, device=device,
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
