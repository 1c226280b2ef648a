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
from capo.pairs import split_prompt_completion


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
