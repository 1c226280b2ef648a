"""Shared-prefix CAPO: score one chosen response against all its rejected ones in a single packed sequence.

All CAPO pairs of one target on one item share the prompt, and pairs with the same chosen response share that too
(one chosen against up to three rejected). TRL's `DPOTrainer` re-encodes prompt + chosen for every pair and pads
every batch. Here each group is packed once as `prompt | chosen | rejected_1 | ... | rejected_k`, several groups
side by side in one row without padding; a block attention mask lets every response see only the prompt and its
own earlier tokens, and per-segment positions restart after the prompt, so each response is scored exactly as if it
followed the prompt alone. The last prompt position predicts the first token of every response.

Distributed training: ranks get different numbers of pairs (a group holds 1-3), so the trainer divides per-pair
sums by the pair count of the whole step (all ranks, all accumulated micro-batches), never by a per-rank mean.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from capo.errors import DataError
from capo.train.pairs import split_prompt_completion

SUPPORTED_LOSSES = ("sigmoid", "sft")
ATTENTION = ("sdpa", "eager")  # implementations that take an arbitrary 4D mask


@dataclass
class PairGroup:
    prompt: list[int]
    chosen: list[int]
    rejected: list[list[int]]
    pairs: list[int]  # row index of the pair behind each rejected response


def group_pairs(rows: Sequence[dict], tokenizer, max_length: int | None = None) -> list[PairGroup]:
    """Tokenise pair rows (as TRL does: cut after the tokenised prompt) and group them by (prompt, chosen).

    `max_length` truncates as TRL's `keep_start` does: a pair whose prompt alone fills it is dropped, and every
    response is cut to what fits after the prompt (prompt + response <= max_length)."""
    groups: dict[str, PairGroup] = {}
    for index, row in enumerate(rows):
        prompt, chosen = split_prompt_completion(tokenizer, row["prompt"], row["chosen"])
        prompt_r, rejected = split_prompt_completion(tokenizer, row["prompt"], row["rejected"])
        if prompt != prompt_r:
            raise DataError("chosen and rejected prompts tokenise differently", item=row.get("id"))
        if max_length is not None:
            if len(prompt) >= max_length:
                continue
            chosen, rejected = chosen[: max_length - len(prompt)], rejected[: max_length - len(prompt)]
        key = json.dumps([prompt, chosen])
        group = groups.setdefault(key, PairGroup(prompt, chosen, [], []))
        group.rejected.append(rejected)
        group.pairs.append(index)
    return list(groups.values())


def pack(groups: Sequence[PairGroup]) -> dict:
    """One unpadded row: input ids, per-segment positions, who owns each token, and what to gather for logps.

    `token_block` / `token_segment` (-1 for prompt tokens) define the block attention mask (`block_attention_mask`,
    built on the model's device: it is quadratic in length). `pred` are the positions whose logits predict a response
    token, `target` those tokens, `segment` which response each belongs to; per pair its chosen and rejected segment
    indices (in group order). `chosen_tokens` counts chosen tokens once per pair, as TRL's sft term does."""
    import torch

    ids, pos, token_block, token_segment = [], [], [], []
    pred, target, segment = [], [], []
    chosen_seg, rejected_seg, pair_rows = [], [], []
    n_segments = 0
    for block, group in enumerate(groups):
        start = len(ids)
        ids += group.prompt
        pos += range(len(group.prompt))
        token_block += [block] * len(group.prompt)
        token_segment += [-1] * len(group.prompt)
        last_prompt = start + len(group.prompt) - 1
        first = n_segments
        for tokens in [group.chosen, *group.rejected]:
            seg_start = len(ids)
            ids += tokens
            pos += range(len(group.prompt), len(group.prompt) + len(tokens))
            token_block += [block] * len(tokens)
            token_segment += [n_segments] * len(tokens)
            for i, token in enumerate(tokens):
                pred.append(last_prompt if i == 0 else seg_start + i - 1)
                target.append(token)
                segment.append(n_segments)
            n_segments += 1
        for k, row in enumerate(group.pairs):
            chosen_seg.append(first)
            rejected_seg.append(first + 1 + k)
            pair_rows.append(row)
    return {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([pos]),
        "token_block": torch.tensor(token_block),
        "token_segment": torch.tensor(token_segment),
        "pred": torch.tensor(pred),
        "target": torch.tensor(target),
        "segment": torch.tensor(segment),
        "n_segments": n_segments,
        "chosen_segment": torch.tensor(chosen_seg),
        "rejected_segment": torch.tensor(rejected_seg),
        "pair_rows": pair_rows,
        "chosen_tokens": sum(len(g.chosen) * len(g.rejected) for g in groups),
        "tokens": len(ids),
    }


def check_attention(attn_implementation: str) -> None:
    """The packed row needs an attention implementation that takes an arbitrary 4D mask."""
    if attn_implementation not in ATTENTION:
        raise DataError(f"shared-prefix training needs attn_implementation {' or '.join(ATTENTION)} (a custom 4D "
                        f"attention mask), got {attn_implementation!r}")


def block_attention_mask(packed: dict, attn_implementation: str, dtype=None):
    """(1, 1, L, L) mask on the packed row's device: a query sees earlier keys of its own block that are prompt
    tokens or tokens of its own segment. Boolean for sdpa; additive (0 / dtype min) for eager."""
    import torch

    check_attention(attn_implementation)
    block, seg = packed["token_block"], packed["token_segment"]
    index = torch.arange(len(block), device=block.device)
    visible = ((index[None, :] <= index[:, None]) & (block[None, :] == block[:, None])
               & ((seg[None, :] == -1) | (seg[None, :] == seg[:, None])))
    if attn_implementation == "sdpa":
        return visible[None, None]
    dtype = dtype if dtype is not None and dtype.is_floating_point else torch.float32
    return torch.zeros(visible.shape, dtype=dtype, device=block.device).masked_fill(
        ~visible, torch.finfo(dtype).min)[None, None]


def pair_logps(model, packed: dict, attention_mask=None):
    """(chosen, rejected) summed log-probs per pair, from one forward pass over the packed row.

    `attention_mask` defaults to `block_attention_mask` for `model`; pass it when `model` is wrapped (DDP) or to
    share one mask between the policy and the reference pass."""
    if attention_mask is None:
        attention_mask = block_attention_mask(packed, model.config._attn_implementation, model.dtype)
    # logits only at the positions that predict a response token (duplicates allowed: the last prompt position)
    out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], attention_mask=attention_mask,
                use_cache=False, logits_to_keep=packed["pred"])
    token_logps = out.logits[0].float().log_softmax(-1).gather(-1, packed["target"][:, None])[:, 0]
    seg_logps = token_logps.new_zeros(packed["n_segments"]).index_add(0, packed["segment"], token_logps)
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


def unsupported_options(args) -> list[str]:
    """The `DPOConfig` settings the shared-prefix trainer does not implement (empty: all fine).

    Options without an effect here are not listed: `f_alpha_divergence_coef`, `discopop_tau` and
    `precompute_ref_batch_size` only act with a loss / mode refused below, `dataset_num_proc` only sets speed."""
    checks = [
        (any(t not in SUPPORTED_LOSSES for t in args.loss_type), f"loss_type {' '.join(args.loss_type)}"),
        (args.label_smoothing != 0.0, f"label_smoothing {args.label_smoothing}"),
        (args.f_divergence_type != "reverse_kl", f"f_divergence_type {args.f_divergence_type}"),
        (args.ld_alpha is not None, f"ld_alpha {args.ld_alpha}"),
        (args.use_weighting, "use_weighting"),
        (args.padding_free, "padding_free (packed rows are never padded)"),
        (args.pad_to_multiple_of is not None, f"pad_to_multiple_of {args.pad_to_multiple_of}"),
        (args.precompute_ref_log_probs, "precompute_ref_log_probs"),
        (args.sync_ref_model, "sync_ref_model"),
        (args.truncation_mode != "keep_start",
         f"truncation_mode {args.truncation_mode} (a shared prompt cannot be cut differently per response)"),
    ]
    return [what for bad, what in checks if bad]


def check_options(args, ref_model=None) -> None:
    """One-line DataError naming every `DPOConfig` option (and a separate `ref_model`) this trainer does not do."""
    bad = unsupported_options(args)
    if ref_model is not None:
        bad.append("ref_model (the reference is the frozen adapter copy or the base model)")
    if bad:
        raise DataError(f"shared-prefix training (--shared_prefix) does not implement: {'; '.join(bad)} (it "
                        f"supports loss_type {' / '.join(SUPPORTED_LOSSES)} with loss_weights, beta, max_length "
                        "with truncation_mode keep_start)")


def group_rows(dataset, tokenizer, max_length: int | None):
    """Pair rows -> one row per (prompt, chosen) group, in TRL's tokenised column names."""
    from datasets import Dataset

    groups = group_pairs(list(dataset), tokenizer, max_length)
    if not groups:
        raise DataError(f"no pair fits max_length {max_length} (every prompt fills it)")
    return Dataset.from_list([{"prompt_ids": g.prompt, "chosen_ids": g.chosen, "rejected_ids": g.rejected,
                               "pair_index": g.pairs} for g in groups])


def collate_groups(rows: Sequence[dict]) -> dict:
    """A batch of group rows -> one packed row (see `pack`)."""
    return pack([PairGroup(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"], r["pair_index"]) for r in rows])
