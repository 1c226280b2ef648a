"""Likelihood attribution: does a model prefer the target annotator's real explanation over the others'?

For a held-out item, each annotation's explanation is scored by the model as the mean log-probability of its tokens
(and the end-of-turn token that closes it: the first special token the chat template writes after the assistant's
message, eos or another, `turn_end`), conditioned on the task prompt and the annotation's own label line. The
target wins a comparison when its explanation scores higher than another annotator's explanation on the same item
(ties count half). An item's score is its share of wins; a model's win rate is the mean over items. A base model
already prefers some annotators' style, so what matters is the gain over the base model, with a paired bootstrap
interval over items, next to a control: the same target scored under another annotator's model.

`eval/attribution.py` is `AttributionArguments` and one call, `run_attribution`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from capo.cli import repeatable
from capo.data.prompts import prompt_messages, render_chat, render_response
from capo.data.schema import ANNOTATORS, Item, check_annotator
from capo.errors import DataError
from capo.evaluate.intervals import mean_interval
from capo.generate.backends.base import DTYPES
from capo.precision import resolve_dtype

EXPLANATION_MARK = "\nExplanation:"


@dataclass(frozen=True)
class Scored:
    item: str
    annotator: str
    label: str
    score: float  # mean log-probability per explanation token


def _special_tokens(tokenizer) -> list[str]:
    """Every special token's text (eos, added control tokens such as `<end_of_turn>` or `<|eot_id|>`), longest
    first, so that where two start at one place the longer one is taken."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or ())
    tokens |= {t.content for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values() if t.special}
    return sorted((t for t in tokens if t), key=len, reverse=True)


def turn_end(tokenizer, text: str, content_end: int, item: str | None = None) -> int:
    """Where the assistant turn whose content ends at `content_end` in `text` (a chat-template rendering ending with
    that turn) is closed: the end of the first special token the template writes after the content. That is the
    eos token for many templates, but not for all (Gemma ends a turn with `<end_of_turn>` and has `<eos>`; Llama 3
    has `<|eot_id|>`), so it is looked up in what the template appends, not assumed."""
    suffix = text[content_end:]
    found = [(suffix.find(token), -len(token), token) for token in _special_tokens(tokenizer) if token in suffix]
    if not found:
        raise DataError(f"the chat template writes no special token after the assistant's message ({suffix!r}), so "
                        "the end of its turn, scored with the explanation, cannot be found",
                        path=getattr(tokenizer, "name_or_path", None) or None, item=item, field="chat_template")
    position, _, token = min(found)
    return content_end + position + len(token)


def _explanation_mask(tokenizer, item: Item, label: str, explanation: str, persona: str | None = None
                      ) -> tuple[list[int], list[bool]]:
    """Token ids of prompt + response and which of them belong to the explanation (found by character offsets): the
    explanation's tokens and the token that ends the assistant's turn after it (`turn_end`)."""
    response = render_response(label, explanation)
    messages = prompt_messages(item, annotator=persona) + [{"role": "assistant", "content": response}]
    text = render_chat(tokenizer, messages, generation_prompt=False)
    content = text.rfind(response)
    if content < 0:
        raise DataError("the chat template changes the assistant's message, so its explanation cannot be found in "
                        "the rendered text", path=getattr(tokenizer, "name_or_path", None) or None, item=item.id,
                        field="chat_template")
    start = content + response.index(EXPLANATION_MARK) + len(EXPLANATION_MARK)
    end = turn_end(tokenizer, text, content + len(response), item=item.id)  # the turn's end closes the explanation
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [s >= start and e <= end and e > s for s, e in encoded["offset_mapping"]]
    return encoded["input_ids"], mask


def score_annotations(model, tokenizer, items: Sequence[Item], batch_size: int = 16, persona: str | None = None
                      ) -> list[Scored]:
    """Length-normalised log-likelihood of every annotated explanation on `items` under `model` (a conditioned
    explainer: prompted as `persona`)."""
    import torch

    jobs = [(item, a) for item in items for a in item.annotations if a.annotator in ANNOTATORS]
    encoded = [_explanation_mask(tokenizer, item, a.label, a.explanation, persona) for item, a in jobs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    scores: list[float] = []
    model.eval()
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        # Right padding: positions stay 0..n-1 for every row, as in training.
        ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
        attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=device)
        mask = torch.tensor([m + [False] * (width - len(m)) for _, m in batch], device=device)
        # Position t predicts token t+1; only positions that predict an explanation token in some row need the
        # vocabulary projection (the prompt is most of each row: 3-6x less work than all logits).
        target_mask = mask[:, 1:]
        keep = target_mask.any(0).nonzero()[:, 0]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, keep + 1, None])[..., 0]
        target_mask = target_mask[:, keep]
        per_row = (logprobs * target_mask).sum(1) / target_mask.sum(1).clamp(min=1)
        scores.extend(per_row.tolist())
    return [Scored(item.id, a.annotator, a.label, s) for (item, a), s in zip(jobs, scores, strict=True)]


def item_win_rates(scored: Sequence[Scored], target: str) -> dict[str, float]:
    """item id -> share of (target explanation, other annotator's explanation) comparisons the target wins."""
    by_item: dict[str, list[Scored]] = {}
    for s in scored:
        by_item.setdefault(s.item, []).append(s)
    rates = {}
    for item_id, rows in by_item.items():
        mine = [r.score for r in rows if r.annotator == target]
        others = [r.score for r in rows if r.annotator != target]
        if mine and others:
            wins = [1.0 if m > o else 0.5 if m == o else 0.0 for m in mine for o in others]
            rates[item_id] = float(np.mean(wins))
    return rates


def mean_rate(rates: dict[str, float]) -> float:
    return float(np.mean(list(rates.values()))) if rates else float("nan")


def paired_gain(model_rates: Sequence[dict[str, float]], base_rates: dict[str, float], seed: int = 0,
                n_resamples: int = 2000) -> dict[str, float]:
    """Gain of the seed-averaged per-item win rate over the base model, with a 95 % bootstrap interval over items
    (paired: the interval of the mean per-item gain)."""
    ids = sorted(set(base_rates).intersection(*model_rates))
    gains = np.array([np.mean([rates[i] for rates in model_rates]) - base_rates[i] for i in ids])
    est = mean_interval(gains, seed=seed, n_resamples=n_resamples, level=0.95)
    return {"gain": est.mean, "low": est.low, "high": est.high, "items": len(ids)}


def control_annotator(annotator: str, among: Sequence[str] = ANNOTATORS) -> str:
    """The annotator whose model serves as the control for `annotator`: the next one of `among`, cyclically (all
    four when fewer than two are evaluated), so a run over a subset of annotators needs only their adapters."""
    pool = [a for a in ANNOTATORS if a in among] if len(set(among)) > 1 else list(ANNOTATORS)
    if annotator not in pool:
        pool = list(ANNOTATORS)
    return pool[(pool.index(annotator) + 1) % len(pool)]


def _load(base_path: str, adapter: str | None, dtype: str = "float32", device=None):
    """The base model, with `adapter` merged into it, on `device` (None: `capo.precision.resolve_device`); scoring
    puts its inputs on the parameters' device."""
    from capo.generate.backends.hf import load_causal_lm

    model, _ = load_causal_lm(base_path, dtype, device)
    if adapter is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter).merge_and_unload()  # merged in place, on the model's device


def adapter_folders(adapters: dict[str, str], seeds: Sequence[int], annotators: Sequence[str], task: str
                    ) -> dict[tuple[str, int, str], str]:
    """(kind, seed, annotator) -> folder, for every adapter a report over `annotators` scores (their controls too).

    `adapters` maps a kind ("sft", "capo") to a folder template with `{seed}`, `{task}` and `{annotator}`; a template
    without `{annotator}` is a conditioned explainer (one folder for every annotator: `conditioned_kinds`)."""
    controls = {control_annotator(t, annotators) for t in annotators}
    return {(kind, seed, a): template.format(seed=seed, task=task, annotator=a)
            for kind, template in adapters.items() for seed in seeds for a in ANNOTATORS
            if a in annotators or a in controls}


def conditioned_kinds(adapters: dict[str, str]) -> set[str]:
    """Kinds whose template names one adapter for all annotators (trained with annotator 'all'); they are scored
    with the target's id in the prompt."""
    return {kind for kind, template in adapters.items() if "{annotator}" not in template}


def adapter_names(folders: dict[tuple[str, int, str], str]) -> dict[str, str]:
    """name -> folder, as `capo.data.heldout` names adapters in its messages (e.g. "capo A2 seed 1")."""
    return {f"{kind} {a} seed {seed}": folder for (kind, seed, a), folder in sorted(folders.items())}


def attribution_report(
    base_path: str,
    adapters: dict[str, str],
    items: Sequence[Item],
    *,
    seeds: Sequence[int] = (0,),
    annotators: Sequence[str] = ANNOTATORS,
    task: str = "nli",
    bootstrap_seed: int = 0,
    exclude_pretrained: bool = True,
    dtype: str = "float32",
    scores_dir: str | None = None,
    allow_unchecked_adapters: bool = False,
    device=None,
    log=print,
) -> dict:
    """Win rates of base and adapted models for every target annotator, gains over base, and the control.

    `adapters` maps a kind ("sft", "capo") to a folder template with `{seed}`, `{task}` and `{annotator}` (without
    `{annotator}`: one conditioned explainer, prompted with each annotator's id); `dtype` is the models' weights
    (bfloat16: ~2x faster on CPUs with bf16 kernels, scores within ~0.05 nats/token). Items an adapter trained on (its
    run manifest) are refused, and so is an adapter without a run manifest unless `allow_unchecked_adapters` (the
    report's `unchecked_adapters` then names it); items the base model was pre-trained on (a corpus LM) are counted
    and, with `exclude_pretrained`, left out. With `scores_dir`, each model's scores are kept there as it finishes,
    so a killed report resumes at the next model. Models load on `device` (None: `capo.precision.resolve_device`).
    """
    from pathlib import Path

    from transformers import AutoTokenizer

    from capo.data.heldout import check_heldout, leave_out_pretrained
    from capo.generate.backends.base import check_dtype
    from capo.io import check_adapter_weights
    from capo.models.corpus_lm import pretraining_item_ids

    dtype = resolve_dtype(check_dtype(dtype), device)  # before any model loads; auto: this device's choice, recorded
    folders = adapter_folders(adapters, seeds, annotators, task)
    missing = [folder for _, folder in sorted(folders.items()) if not (Path(folder) / "adapter_config.json").exists()]
    if missing:
        raise DataError(f"no adapter in {len(missing)} folder(s), first: {missing[0]}")
    for _, folder in sorted(folders.items()):
        check_adapter_weights(folder)
    unchecked = check_heldout(items, adapter_names(folders), log=log, allow_unchecked=allow_unchecked_adapters)
    # An item whose explanations the base model was pre-trained on is not held out from it, whatever the split says
    # (e.g. another split seed than the corpus LM's, or LeWiDi test items that are VariErr train items).
    items = leave_out_pretrained(items, pretraining_item_ids(base_path), exclude_pretrained, log=log)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    controls = {t: control_annotator(t, annotators) for t in annotators}
    cache = ScoreCache(scores_dir, base_path, dtype, items)
    base_scores = cache.get("base", [None], lambda: {None: score_annotations(_load(base_path, None, dtype, device),
                                                                            tokenizer, items)})[None]
    conditioned = conditioned_kinds(adapters)
    scores = {}
    keys_of: dict[str, list[tuple[str, int, str]]] = {}  # a conditioned adapter serves several keys: load it once
    for key in sorted(folders):
        keys_of.setdefault(folders[key], []).append(key)
    for folder, keys in keys_of.items():
        def score_folder(folder=folder, keys=keys) -> dict:
            model = _load(base_path, folder, dtype, device)
            return {key: score_annotations(model, tokenizer, items, persona=key[2] if key[0] in conditioned else None)
                    for key in keys}
        scores.update(cache.get(folder, keys, score_folder))
        log(f"scored {folder}")
    report = {"items": len(items), "seeds": list(seeds), "dtype": dtype, "annotators": {},
              "unchecked_adapters": unchecked}  # used without a run manifest: their items were not checked
    for target in annotators:
        base = item_win_rates(base_scores, target)
        row = {"base": mean_rate(base), "items": len(base)}
        for kind in adapters:
            own = [item_win_rates(scores[(kind, seed, target)], target) for seed in seeds]
            other = [item_win_rates(scores[(kind, seed, controls[target])], target) for seed in seeds]
            own_means = [mean_rate(r) for r in own]
            row[kind] = {
                "win_rate_mean": float(np.mean(own_means)),
                "win_rate_sd": float(np.std(own_means, ddof=1)) if len(seeds) > 1 else 0.0,
                "per_seed": own_means,
                "gain": paired_gain(own, base, seed=bootstrap_seed),
                "control": {"model_of": controls[target],
                            "win_rate_mean": float(np.mean([mean_rate(r) for r in other])),
                            "gain": paired_gain(other, base, seed=bootstrap_seed)},
            }
        report["annotators"][target] = row
    return report


class ScoreCache:
    """One JSON file per scored model in `folder` (none: no cache). A file is used only when it was written for the
    same base model, dtype, items and keys; anything else is scored again and overwritten."""

    def __init__(self, folder: str | None, base_path: str, dtype: str, items: Sequence[Item]):
        self.folder = folder
        self.context = {"base": str(base_path), "dtype": dtype, "items": [item.id for item in items]}

    def get(self, model: str, keys: Sequence, score: Callable[[], dict]) -> dict:
        if self.folder is None:
            return score()
        from pathlib import Path

        from capo.io import read_json, write_json

        path = Path(self.folder) / (hashlib.sha256(model.encode()).hexdigest()[:16] + ".json")
        expected = {**self.context, "model": model, "keys": [_key_name(k) for k in keys]}
        if path.exists():
            stored = read_json(path)
            if {k: stored.get(k) for k in expected} == expected:
                return {key: [Scored(*row) for row in stored["scores"][_key_name(key)]] for key in keys}
        result = score()
        write_json(path, {**expected, "scores": {_key_name(k): [[s.item, s.annotator, s.label, s.score] for s in v]
                                                 for k, v in result.items()}})
        return result


def _key_name(key) -> str:
    return "base" if key is None else " ".join(map(str, key))


def format_report(report: dict, kinds: Sequence[str]) -> str:
    """A markdown table: base win rate, each kind's win rate (mean ± sd over seeds), gain [95 % CI], control gain."""
    head = "| target | items | base |" + "".join(
        f" {k.upper()} win | {k.upper()} gain [95% CI] | control: {k.upper()} model of | control gain [95% CI] |"
        for k in kinds)
    lines = [head, "|" + " --- |" * (3 + 4 * len(kinds))]
    for target, row in report["annotators"].items():
        cells = [target, str(row["items"]), f"{row['base']:.3f}"]
        for k in kinds:
            r, g, c = row[k], row[k]["gain"], row[k]["control"]
            cells += [f"{r['win_rate_mean']:.3f} ± {r['win_rate_sd']:.3f}",
                      f"{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]", c["model_of"],
                      f"{c['gain']['gain']:+.3f} [{c['gain']['low']:+.3f}, {c['gain']['high']:+.3f}]"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class AttributionArguments:
    """Arguments of `eval/attribution.py` (a `TrlParser` dataclass; YAML config keys have the same names)."""

    model: str = field(default="models/corpus-lm", metadata={"help": "base model (hub id or folder)"})
    adapter: list[str] = field(default_factory=list, metadata=repeatable(
        "adapter folders, with {seed}, {task}, {annotator} filled in; repeatable. A template without {annotator} is "
        "one conditioned explainer (trained with --annotator all), scored with each target's id in the prompt",
        metavar="KIND=TEMPLATE"))
    seeds: list[int] = field(default_factory=lambda: [0])
    annotators: list[str] = field(default_factory=lambda: list(ANNOTATORS))
    task: str = "nli"
    dataset: str | None = field(default=None, metadata={
        "help": "default: varierr for nli, lewidi-par for paraphrase; or your own JSONL"})
    split_seed: int = field(default=0, metadata={
        "help": "split of items the adapters' manifests do not know (theirs decides the others)"})
    splits: list[str] = field(default_factory=lambda: ["dev", "test"], metadata={"help": "held-out splits to score"})
    # true/false as text, not bool: a bad value is refused in the project's words (`_true_or_false`)
    exclude_pretrained: str = field(default="true", metadata={
        "help": "true: leave out items the base corpus LM was pre-trained on (their count is reported)"})
    limit: int | None = field(default=None, metadata={"help": "score at most the first N held-out items of each split"})
    dtype: str = field(default="float32", metadata={
        "choices": DTYPES, "help": "model weights (bfloat16: ~2x faster on CPUs with bf16 kernels)"})
    output: str | None = field(default=None, metadata={"help": "write the full report as JSON"})
    scores_dir: str | None = field(default=None, metadata={
        "help": "keep each model's scores here as it finishes; a rerun with the same settings resumes at the next "
                "model"})
    allow_unchecked_adapters: str = field(default="false", metadata={
        "help": "true: use adapters without a run manifest (their training items are not checked; the report names "
                "them)"})

    def __post_init__(self) -> None:
        # Every value check happens here, while parsing: nothing is read or loaded before a bad value is refused.
        self.allow_unchecked_adapters = _true_or_false(self.allow_unchecked_adapters, "allow_unchecked_adapters")
        self.exclude_pretrained = _true_or_false(self.exclude_pretrained, "exclude_pretrained")
        for annotator in self.annotators:
            check_annotator(annotator)
        if "train" in self.splits:
            raise DataError("attribution is measured on held-out items: use dev and/or test, not train")
        if self.limit is not None and self.limit < 1:
            raise DataError(f"--limit must be at least 1, got {self.limit}", field="--limit")
        self.folders()

    def adapters(self) -> dict[str, str]:
        """Kind -> folder template, in the order given."""
        adapters = {}
        for spec in self.adapter:
            kind, sep, template = spec.partition("=")
            if not sep or not kind or not template:
                raise DataError(f"--adapter expects KIND=TEMPLATE, got {spec!r}")
            adapters[kind] = template
        return adapters

    def folders(self) -> dict[str, str]:
        """Adapter name -> folder, for every adapter the report scores (`adapter_names`)."""
        try:
            return adapter_names(adapter_folders(self.adapters(), self.seeds, self.annotators, self.task))
        except (KeyError, IndexError, ValueError) as err:
            raise DataError(f"bad adapter template: use {{seed}}, {{task}}, {{annotator}} ({err})",
                            field="--adapter") from None


def _true_or_false(value, name: str) -> str:
    """"true" or "false" (a YAML config gives a bool); anything else is refused, naming the field."""
    text = str(value).lower()
    if text not in ("true", "false"):
        raise DataError(f"expected true or false, got {value!r}", field=name)
    return text


def run_attribution(args: AttributionArguments) -> dict:
    """`eval/attribution.py`: the held-out items of `args.splits` (as the adapters' run manifests split them), their
    `attribution_report` with the arguments that made it, printed as a table (`format_report`) and written to
    `args.output`. The model, the adapters and the output are checked before anything loads."""
    from capo.data.datasets import load_task_data
    from capo.data.heldout import select_heldout
    from capo.io import check_model_path, check_output, write_json

    if args.output:
        check_output(args.output)
    check_model_path(args.model)
    folders = args.folders()
    for path in folders.values():  # every adapter the report will load, before the first model loads
        check_model_path(path, kind="adapter")
    adapters, exclude = args.adapters(), args.exclude_pretrained == "true"
    data = load_task_data(args.task, args.dataset, args.split_seed)
    items = [item for split in args.splits for item in select_heldout(data, split, folders)[: args.limit]]
    report = attribution_report(args.model, adapters, items, seeds=args.seeds, annotators=args.annotators,
                                task=args.task, exclude_pretrained=exclude, dtype=args.dtype,
                                scores_dir=args.scores_dir,
                                allow_unchecked_adapters=args.allow_unchecked_adapters == "true",
                                log=lambda msg: print(msg, flush=True))
    report.update(model=args.model, adapters=adapters, splits=args.splits, task=args.task,
                  dataset=data.dataset, exclude_pretrained=exclude, limit=args.limit, dtype=args.dtype)
    print(format_report(report, list(adapters)))
    if args.output:
        write_json(args.output, report)
    return report
