"""Shared-prefix CAPO: score one chosen response against all its rejected ones in a single packed sequence.

All CAPO pairs of one target on one item share the prompt, and pairs with the same chosen response share that too
(one chosen against up to three rejected). TRL's `DPOTrainer` re-encodes prompt + chosen for every pair and pads
every batch. Here each group is packed once as `prompt | chosen | rejected_1 | ... | rejected_k`, several groups
side by side in one row without padding; a block attention mask lets every response see only the prompt and its
own earlier tokens, and per-segment positions restart after the prompt, so each response is scored exactly as if it
followed the prompt alone. The last prompt position predicts the first token of every response. This is prefix
sharing for DPO (arXiv 2410.20305; its reference code, frankxwang/dpo-prefix-sharing, masks with FlexAttention too).

Memory, where it matters (a GPU, a 128k vocabulary, 16 groups in a row of L tokens):
- the attention mask (`block_attention_mask`) follows the model's attention implementation. `flex_attention`: a
  FlexAttention `BlockMask` (`create_block_mask`, compiled on CUDA so no L x L tensor is built; only the 128 x 128
  blocks that hold visible keys are computed); the shared-prefix trainer switches an sdpa model to it on CUDA
  (`training_attention`). `sdpa` / `eager`: a dense (1, 1, L, L) mask; the CPU uses it, since FlexAttention has no
  backward on the CPU (torch 2.13), and so does any device or model without FlexAttention.
- log-probabilities (`pair_logps`) are computed only at the positions that predict a response token, a chunk of
  positions at a time, as logit[target] - logsumexp(logits) (`chunked_logps`): no L x V or full log-softmax tensor,
  and under autograd each chunk's logits are recomputed in the backward pass, so one chunk's logits are alive at once.

Distributed training: ranks get different numbers of pairs (a group holds 1-3), so the trainer divides per-pair
sums by the pair count of the whole step (all ranks, all accumulated micro-batches), never by a per-rank mean. It runs
one process per GPU (`accelerate launch`), never DataParallel, which would split the row's 1-D index tensors.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from capo.errors import DataError
from capo.train.pairs import split_prompt_completion

SUPPORTED_LOSSES = ("sigmoid", "sft")
ATTENTION = ("sdpa", "eager", "flex_attention")  # implementations that take a dense 4D mask or a BlockMask
LOGIT_CHUNK = 2**26  # logits (positions x vocabulary) per chunk: 256 MiB in fp32, 512 positions of a 128k vocabulary
# Config fields that change the logits after the output projection: there the model's own logits are used.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


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
    built on the model's device). `pred` are the positions whose logits predict a response token, `target` those
    tokens, `segment` which response each belongs to; per pair its chosen and rejected segment indices (in group
    order). `chosen_tokens` counts chosen tokens once per pair, as TRL's sft term does."""
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
    """The packed row needs an attention implementation that takes an arbitrary 4D mask or a BlockMask."""
    if attn_implementation not in ATTENTION:
        raise DataError(f"shared-prefix training needs attn_implementation {' or '.join(ATTENTION)} (a custom "
                        f"attention mask), got {attn_implementation!r}")


def flex_trains_on(device) -> bool:
    """Whether FlexAttention runs forward and backward on `device` in this torch: CUDA (compiled with Triton); the
    CPU runs its forward only (torch 2.13)."""
    import importlib.util

    return getattr(device, "type", str(device)) == "cuda" and importlib.util.find_spec("triton") is not None


def training_attention(model, device) -> str:
    """The attention the shared-prefix trainer uses for `model` on `device`: FlexAttention where it trains and the
    model supports it (an sdpa model is switched to it; eager stays, as it is only chosen to debug), else the model's
    own sdpa / eager with the dense mask. A model set to flex_attention where FlexAttention cannot train is refused."""
    attention = model.config._attn_implementation
    check_attention(attention)
    trains = flex_trains_on(device)
    if attention == "flex_attention" and not trains:
        raise DataError(f"attn_implementation flex_attention cannot train on {device} (FlexAttention has no backward "
                        "there): use sdpa, which gets a dense block mask")
    if attention == "sdpa" and trains and getattr(model, "_supports_flex_attn", False):
        return "flex_attention"
    return attention


@functools.cache
def _compiled_create_block_mask():
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)  # fused: never builds the L x L boolean mask


def block_attention_mask(packed: dict, attn_implementation: str, dtype=None):
    """The attention mask on the packed row's device: a query sees earlier keys of its own block that are prompt
    tokens or tokens of its own segment. flex_attention: a `BlockMask` (compiled on CUDA; built from the evaluated
    mask elsewhere); sdpa: a boolean (1, 1, L, L) mask; eager: additive (0 / dtype min)."""
    import torch

    check_attention(attn_implementation)
    block, seg = packed["token_block"], packed["token_segment"]
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def visible(batch, head, q, kv):
            return (kv <= q) & (block[kv] == block[q]) & ((seg[kv] == -1) | (seg[kv] == seg[q]))

        create = _compiled_create_block_mask() if block.device.type == "cuda" else create_block_mask
        return create(visible, None, None, len(block), len(block), device=block.device)
    index = torch.arange(len(block), device=block.device)
    visible = ((index[None, :] <= index[:, None]) & (block[None, :] == block[:, None])
               & ((seg[None, :] == -1) | (seg[None, :] == seg[:, None])))
    if attn_implementation == "sdpa":
        return visible[None, None]
    dtype = dtype if dtype is not None and dtype.is_floating_point else torch.float32
    return torch.zeros(visible.shape, dtype=dtype, device=block.device).masked_fill(
        ~visible, torch.finfo(dtype).min)[None, None]


def _chunk_logps(logits_of: Callable, rows, target):
    logits = logits_of(rows).float()
    return logits.gather(-1, target[:, None])[:, 0] - logits.logsumexp(-1)


def chunked_logps(logits_of: Callable, rows, target, vocab_size: int):
    """log p(target[i]) from `logits_of(rows[i])`, a chunk of rows (`LOGIT_CHUNK` logits) at a time, as
    logit[target] - logsumexp(logits). Under autograd each chunk is checkpointed: its logits are recomputed in the
    backward pass instead of kept."""
    import torch
    from torch.utils.checkpoint import checkpoint

    size = max(1, LOGIT_CHUNK // vocab_size)
    keep_graph = torch.is_grad_enabled() and (rows.requires_grad or any(
        p.requires_grad for p in getattr(logits_of, "parameters", lambda: ())()))
    parts = []
    for start in range(0, len(target), size):
        chunk = (rows[start : start + size], target[start : start + size])
        parts.append(checkpoint(_chunk_logps, logits_of, *chunk, use_reentrant=False) if keep_graph
                     else _chunk_logps(logits_of, *chunk))
    return torch.cat(parts) if parts else rows.new_zeros(0, dtype=torch.float32)


def _response_rows(model, packed: dict, attention_mask, unwrapped):
    """(rows, logits_of, vocabulary size): what predicts each response token, and the map from a chunk of rows to
    its logits.

    The output projection's input is taken at the predicting positions (a pre-hook hands the projection an empty
    slice instead, so the model computes no logits) and projected here in chunks. Where the model changes the logits
    after the projection (softcapping, scaling), shards the projection (FSDP: it is only whole inside the forward) or
    calls no projection module, its own logits are used."""
    head = unwrapped.get_output_embeddings()
    config = unwrapped.config.get_text_config()
    captured = []
    handle = None
    sharded = type(getattr(head, "weight", None)).__name__ == "DTensor"
    if head is not None and not sharded and not any(getattr(config, name, None) is not None
                                                    for name in _LOGIT_TRANSFORMS):
        def take_input(module, args):
            captured.append(args[0])
            return (args[0][:, :0], *args[1:])

        handle = head.register_forward_pre_hook(take_input)
    try:
        out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], attention_mask=attention_mask,
                    use_cache=False, logits_to_keep=packed["pred"])
    finally:
        if handle is not None:
            handle.remove()
    if captured:
        return captured[0][0], head, config.vocab_size
    return out.logits[0], (lambda logits: logits), out.logits.shape[-1]


def pair_logps(model, packed: dict, attention_mask=None, *, unwrapped=None):
    """(chosen, rejected) summed log-probs per pair, from one forward pass over the packed row (log-probs at the
    response positions only, in chunks: `chunked_logps`).

    `attention_mask` defaults to `block_attention_mask` for `model`; pass it when `model` is wrapped (DDP) or to
    share one mask between the policy and the reference pass. `unwrapped`: the model inside a DDP wrapper."""
    unwrapped = model if unwrapped is None else unwrapped
    if attention_mask is None:
        attention_mask = block_attention_mask(packed, unwrapped.config._attn_implementation, unwrapped.dtype)
    rows, logits_of, vocab_size = _response_rows(model, packed, attention_mask, unwrapped)
    token_logps = chunked_logps(logits_of, rows, packed["target"], vocab_size)
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
