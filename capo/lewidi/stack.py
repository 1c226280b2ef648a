"""A stack of the per-annotator heads and the annotator-embedding encoder (issue 28, item 1c), mixed on TRAIN only.

The stacked predictive distribution of an (item, annotator) pair is the linear pool w * p_heads + (1 - w) * p_encoder
(Par: of the two 11-point distributions; VEN: of each label's probability). The weight w of W_GRID, and the soft
rule of `capo.lewidi.heads.SOFT_RULES`, are chosen on a held-out part of the **train** split: K-fold training of the
encoder does not fit the 10 minutes a run may take on 2 CPU cores, so it is one train item split — both components
fit on (1 - `stack_holdout`) of the train items, w chosen by the official perspectivist score of the Bayes
decisions on the other `stack_holdout` (ties: the w nearest 1/2), then both components refit on all of train. No
item of a scored split (dev, test, a `_test_clear` file) enters the choice. Decisions are the Bayes decisions of the
heads (Par: the median; VEN: p > 1/2). `run_stack` is `recipes/perspectivist.py --predictor stack`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from capo.data.formats.lewidi import LewidiItem
from capo.errors import DataError
from capo.evaluate.finetune.arguments import default_model_path
from capo.lewidi.annotator_encoder import EncoderAnn, EncoderAnnArguments, check_ann_arguments, run_signature
from capo.lewidi.heads import SOFT_RULES, HeadsComponent, bayes_decision, soft_labels, write_run
from capo.lewidi.perspectivist import annotator_rows, decide, read_run_splits, start_run
from capo.lewidi.score import score

W_GRID: tuple[float, ...] = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))  # weight of the heads
COMPONENTS = ("heads", "encoder_ann")


def holdout_split(items: Sequence[LewidiItem], share: float, seed: int = 0) -> tuple[list, list]:
    """(fit items, held-out items): a seeded random `share` of the items held out, at least one on each side."""
    if len(items) < 2:
        raise DataError(f"the stack needs at least 2 train items, got {len(items)}", field="train_file")
    order = np.random.default_rng(seed).permutation(len(items))
    n_held = min(len(items) - 1, max(1, round(share * len(items))))
    held = set(order[:n_held].tolist())
    return [it for k, it in enumerate(items) if k not in held], [it for k, it in enumerate(items) if k in held]


def pool(w: float, p_heads: np.ndarray, p_encoder: np.ndarray) -> np.ndarray:
    """The linear pool of the two components' probabilities (a distribution stays a distribution)."""
    return w * p_heads + (1 - w) * p_encoder


def choose_weight(items: Sequence[LewidiItem], p_heads: np.ndarray, p_encoder: np.ndarray, dataset: str,
                  grid: Sequence[float] = W_GRID) -> tuple[float, str, dict]:
    """(w, soft rule, record) on labelled held-out TRAIN items: the w of `grid` whose pooled probabilities score
    best on the official perspectivist measure under the Bayes decision (ties: nearest 1/2, then the smaller), then
    the SOFT_RULES rule with the best soft score at that w (ties keep the earlier rule)."""
    rows = annotator_rows(items)
    scores = {}
    for w in grid:
        scores[w] = score(items, decide(rows, pool(w, p_heads, p_encoder), dataset, bayes_decision(dataset)))
    best = min(grid, key=lambda w: (scores[w]["perspectivist"], abs(w - 0.5), w))
    probs = pool(best, p_heads, p_encoder)
    predictions = decide(rows, probs, dataset, bayes_decision(dataset))
    soft = {rule: score(items, None, soft_labels(rule, items, rows, probs, predictions))["soft"] for rule in SOFT_RULES}
    rule = min(SOFT_RULES, key=soft.__getitem__)
    return best, rule, {"holdout_perspectivist": {str(w): s["perspectivist"] for w, s in scores.items()},
                        "holdout_soft_by_rule": soft}


def fit_stack(train_items: Sequence[LewidiItem], make: Callable[[str, str], object], dataset: str, *,
              holdout: float = 0.2, seed: int = 0, log=print) -> tuple[float, str, dict, dict]:
    """Choose the weight on a held-out part of `train_items` (components from `make(name, "holdout")` fit on the
    rest), then refit both components on all of `train_items` (`make(name, "all")`). Returns (w, soft rule, record,
    name -> the component fitted on all of train). `make` builds an unfitted component (`fit(items)` returning
    itself, `predict(items)`): the real ones in `run_stack`, stand-ins in tests."""
    fit_items, held_items = holdout_split(train_items, holdout, seed)
    log(f"stack: components fit on {len(fit_items)} train items, the weight chosen on the other {len(held_items)}")
    held = {name: make(name, "holdout").fit(fit_items).predict(held_items) for name in COMPONENTS}
    w, rule, record = choose_weight(held_items, held["heads"], held["encoder_ann"], dataset)
    log(f"stack: w(heads) = {w}, soft labels: {rule} ({record})")
    record.update({"n_fit_items": len(fit_items), "n_holdout_items": len(held_items),
                   "holdout_ids": sorted(item.id for item in held_items)})
    final = {name: make(name, "all").fit(train_items) for name in COMPONENTS}
    return w, rule, record, final


def run_stack(script, args: EncoderAnnArguments, training_args, log=print, make=None) -> dict:
    """`recipes/perspectivist.py --predictor stack`: `fit_stack` on the train split (encoder fits in
    `encoder_holdout/` and `encoder/` of the output folder, the heads' embeddings cached in `features/` or
    `--feature_cache`), then every split of `script.predict_splits` written as the heads write theirs
    (`capo.lewidi.heads.write_run`). `make` replaces the component builder (tests)."""
    check_ann_arguments(args)
    train_path, train_items, _, _, splits = read_run_splits(script)  # dev is not used: nothing is fitted on it
    output_dir = Path(training_args.output_dir)
    finished = start_run(output_dir, run_signature(script, args, training_args), log)
    if finished is not None:
        return finished
    model_path = script.model_name_or_path or default_model_path()
    seed = training_args.seed
    heads_cache = script.feature_cache or str(output_dir / "features")
    embedded: dict = {}  # one embedding memo for both heads fits: train is embedded once

    def real(name: str, stage: str):
        if name == "heads":
            return HeadsComponent(script.dataset, model_path, heads_cache, seed=seed, components=script.components,
                                  log=log, embedded=embedded)
        return EncoderAnn(script.dataset, model_path, args, training_args,
                          output_dir / ("encoder_holdout" if stage == "holdout" else "encoder"),
                          max_length=script.max_length, log=log)

    started = time.monotonic()
    w, rule, record, final = fit_stack(train_items, make or real, script.dataset, holdout=args.stack_holdout,
                                       seed=seed, log=log)
    heads, encoder = final["heads"], final["encoder_ann"]
    metrics = {"model": model_path, "w_heads": w,
               "soft_rule": rule, "weight_fit": (f"one train item split: components fit on {record['n_fit_items']} "
                                                 f"train items, w chosen on the other {record['n_holdout_items']}, "
                                                 "then both refit on all of train"),
               **record, "heads": getattr(heads, "record", {}), "encoder_ann": {**vars(args),
                                                                               **getattr(encoder, "record", {})},
               "fit_seconds": round(time.monotonic() - started, 1)}

    def predict(items):
        return pool(w, heads.predict(items), encoder.predict(items))

    return write_run(output_dir, script, training_args, metrics, splits, predict, train_items, train_path, rule)
