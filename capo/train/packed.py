"""Shared-prefix CAPO: score one chosen response against all its rejected ones in a single packed sequence.

All CAPO pairs of one target on one item share the prompt, and pairs with the same chosen response share that too
(one chosen against up to three rejected). TRL's `DPOTrainer` re-encodes prompt + chosen for every pair and pads
every batch. Here each group is packed once as `prompt | chosen | rejected_1 | ... | rejected_k`, several groups
side by side in one row without padding; a block attention mask lets every response see only the prompt and its
own earlier tokens, and per-segment positions restart after the prompt, so each response is scored exactly as if it
followed the prompt alone. The last prompt position predicts the first token of every response.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from capo.errors import DataError
from capo.train.pairs import split_prompt_completion


@dataclass
class PairGroup:
    prompt: list[int]
    chosen: list[int]
    rejected: list[list[int]]
    pairs: list[int]  # row index of the pair behind each rejected response


def group_pairs(rows: Sequence[dict], tokenizer) -> list[PairGroup]:
    """Tokenise pair rows (as TRL does: cut after the tokenised prompt) and group them by (prompt, chosen)."""
    groups: dict[str, PairGroup] = {}
    for index, row in enumerate(rows):
        prompt, chosen = split_prompt_completion(tokenizer, row["prompt"], row["chosen"])
        prompt_r, rejected = split_prompt_completion(tokenizer, row["prompt"], row["rejected"])
        if prompt != prompt_r:
            raise DataError("chosen and rejected prompts tokenise differently", item=row.get("id"))
        key = json.dumps([prompt, chosen])
        group = groups.setdefault(key, PairGroup(prompt, chosen, [], []))
        group.rejected.append(rejected)
        group.pairs.append(index)
    return list(groups.values())


def pack(groups: Sequence[PairGroup], dtype=None) -> dict:
    """One unpadded row: input ids, per-segment positions, a 4D additive block mask, and what to gather for logps.

    Returns `pred` (positions whose logits predict a response token), `target` (those tokens), `segment` (which
    response each belongs to), and per pair its chosen and rejected segment indices (in group order)."""
    import torch

    dtype = dtype or torch.float32
    ids, pos, owner = [], [], []  # owner: (block id, segment) with segment -1 for the prompt
    pred, target, segment = [], [], []
    chosen_seg, rejected_seg, pair_rows = [], [], []
    n_segments = 0
    for block, group in enumerate(groups):
        start = len(ids)
        ids += group.prompt
        pos += range(len(group.prompt))
        owner += [(block, -1)] * len(group.prompt)
        last_prompt = start + len(group.prompt) - 1
        segments = [group.chosen, *group.rejected]
        first = n_segments
        for k, tokens in enumerate(segments):
            seg_start = len(ids)
            ids += tokens
            pos += range(len(group.prompt), len(group.prompt) + len(tokens))
            owner += [(block, k)] * len(tokens)
            for i, token in enumerate(tokens):
                pred.append(last_prompt if i == 0 else seg_start + i - 1)
                target.append(token)
                segment.append(n_segments)
            n_segments += 1
        for k, row in enumerate(group.pairs):
            chosen_seg.append(first)
            rejected_seg.append(first + 1 + k)
            pair_rows.append(row)
    length = len(ids)
    block = torch.tensor([b for b, _ in owner])
    seg = torch.tensor([s for _, s in owner])
    index = torch.arange(length)
    causal = index[None, :] <= index[:, None]
    same_block = block[None, :] == block[:, None]
    # A query sees keys of its own block that are prompt tokens or tokens of its own segment.
    visible = causal & same_block & ((seg[None, :] == -1) | (seg[None, :] == seg[:, None]))
    mask = torch.zeros(length, length, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
    return {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([pos]),
        "attention_mask": mask[None, None],
        "pred": torch.tensor(pred),
        "target": torch.tensor(target),
        "segment": torch.tensor(segment),
        "n_segments": n_segments,
        "chosen_segment": torch.tensor(chosen_seg),
        "rejected_segment": torch.tensor(rejected_seg),
        "pair_rows": pair_rows,
        "tokens": length,
    }


def pair_logps(model, packed: dict):
    """(chosen, rejected) summed log-probs per pair, from one forward pass over the packed row."""
    import torch

    out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                attention_mask=packed["attention_mask"], use_cache=False)
    logits = out.logits[0, packed["pred"]].float()  # only the positions that predict a response token
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, packed["target"][:, None])[:, 0]
    seg_logps = torch.zeros(packed["n_segments"], dtype=token_logps.dtype).index_add(0, packed["segment"],
                                                                                     token_logps)
    return seg_logps[packed["chosen_segment"]], seg_logps[packed["rejected_segment"]]


def dpo_sigmoid_losses(policy, reference, beta: float):
    """Per-pair DPO sigmoid loss from (chosen, rejected) log-probs of the policy and the reference."""
    import torch.nn.functional as F

    margin = (policy[0] - reference[0]) - (policy[1] - reference[1])
    return -F.logsigmoid(beta * margin)


def batches(groups: Sequence[PairGroup], pairs_per_step: int) -> list[list[PairGroup]]:
    """Consecutive groups filled up to about `pairs_per_step` pairs (a group is never split)."""
    out, current, count = [], [], 0
    for group in groups:
        current.append(group)
        count += len(group.pairs)
        if count >= pairs_per_step:
            out.append(current)
            current, count = [], 0
    if current:
        out.append(current)
    return out


def _group_rows(dataset, tokenizer):
    """Pair rows -> one row per (prompt, chosen) group, in TRL's tokenised column names."""
    from datasets import Dataset

    groups = group_pairs(list(dataset), tokenizer)
    return Dataset.from_list([{"prompt_ids": g.prompt, "chosen_ids": g.chosen, "rejected_ids": g.rejected,
                               "pair_index": g.pairs} for g in groups])


def collate_groups(rows: Sequence[dict]) -> dict:
    """A batch of group rows -> one packed row (see `pack`)."""
    groups = [PairGroup(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"], r["pair_index"]) for r in rows]
    packed = pack(groups)
    packed["chosen_tokens"] = sum(len(g.chosen) * len(g.rejected) for g in groups)
    return packed


def shared_prefix_dpo_trainer_class():
    """`DPOTrainer` subclass that trains on packed (prompt, chosen, rejected_1..k) groups.

    A batch is `per_device_train_batch_size` *groups* (1-3 pairs each). Losses: `sigmoid`, optionally plus `sft`
    (weighted by `loss_weights`), as TRL computes them; the reference is the frozen "ref" adapter (a copy of the
    starting adapter) or the base model with adapters disabled. Built lazily so that importing this module does not
    import TRL.
    """
    import torch
    from trl import DPOTrainer
    from trl.trainer.utils import use_adapter

    class SharedPrefixDPOTrainer(DPOTrainer):
        SUPPORTED = ("sigmoid", "sft")

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("data_collator", collate_groups)
            super().__init__(*args, **kwargs)
            unknown = [t for t in self.loss_types if t not in self.SUPPORTED]
            if unknown or self.args.precompute_ref_log_probs or self.ld_alpha is not None:
                raise DataError(f"shared-prefix training supports loss_type {' / '.join(self.SUPPORTED)} without "
                                f"precomputed reference log-probs or ld_alpha, got {self.loss_types}")

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return _group_rows(dataset, processing_class)

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "pair_index"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            chosen, rejected = pair_logps(model, inputs)
            unwrapped = self.accelerator.unwrap_model(self.model)
            with torch.no_grad(), use_adapter(unwrapped, "ref" if "ref" in unwrapped.peft_config else None):
                ref_chosen, ref_rejected = pair_logps(model, inputs)
            margin = (chosen - ref_chosen) - (rejected - ref_rejected)
            loss = 0.0
            for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
                if loss_type == "sigmoid":
                    term = dpo_sigmoid_losses((chosen, rejected), (ref_chosen, ref_rejected), self.beta).mean()
                else:  # "sft": mean NLL per chosen token, every pair's chosen counted, as TRL does
                    term = -chosen.sum() / inputs["chosen_tokens"]
                loss = loss + weight * term
            gather = lambda t: self.accelerator.gather_for_metrics(t.detach()).float().mean().item()
            chosen_rewards, rejected_rewards = self.beta * (chosen - ref_chosen), self.beta * (rejected - ref_rejected)
            self._metrics[mode]["rewards/chosen"].append(gather(chosen_rewards))
            self._metrics[mode]["rewards/rejected"].append(gather(rejected_rewards))
            self._metrics[mode]["rewards/accuracies"].append(gather((margin > 0).float()))
            self._metrics[mode]["rewards/margins"].append(gather(self.beta * margin))
            self._metrics[mode]["logps/chosen"].append(gather(chosen))
            self._metrics[mode]["logps/rejected"].append(gather(rejected))
            return (loss, {"margin": margin}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

    return SharedPrefixDPOTrainer
