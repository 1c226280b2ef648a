"""Shared-prefix packed CAPO scoring gives the same per-pair log-probs as scoring every pair on its own."""

from __future__ import annotations

import pytest

from capo.pairs import capo_pairs, load_task_data, split_prompt_completion
from capo.training_packed import batches, dpo_sigmoid_losses, group_pairs, pack, pair_logps


def test_packed_logps_match_separate_sequences(corpus_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    model = AutoModelForCausalLM.from_pretrained(corpus_lm).eval()
    rows = capo_pairs(load_task_data("nli").items("train")[:10], "A3", rejected_valid="any")
    groups = group_pairs(rows, tokenizer)
    assert len(groups) < len(rows) and sorted(i for g in groups for i in g.pairs) == list(range(len(rows)))
    packed = pack(groups)
    assert packed["input_ids"].shape[0] == 1 and packed["tokens"] < sum(
        len(g.prompt) + len(g.chosen) + sum(map(len, g.rejected)) for g in groups) + 1
    with torch.no_grad():
        chosen, rejected = pair_logps(model, packed)

    def alone(prompt, completion):
        with torch.no_grad():
            logps = torch.log_softmax(model(torch.tensor([prompt + completion])).logits[0].float(), -1)
        return sum(logps[len(prompt) + i - 1, t].item() for i, t in enumerate(completion))

    for k, row in enumerate(packed["pair_rows"]):
        prompt, c = split_prompt_completion(tokenizer, rows[row]["prompt"], rows[row]["chosen"])
        _, r = split_prompt_completion(tokenizer, rows[row]["prompt"], rows[row]["rejected"])
        assert chosen[k].item() == pytest.approx(alone(prompt, c), abs=1e-3)
        assert rejected[k].item() == pytest.approx(alone(prompt, r), abs=1e-3)
    losses = dpo_sigmoid_losses((chosen, rejected), (chosen, rejected), beta=0.1)
    assert torch.allclose(losses, torch.full_like(losses, 0.6931472), atol=1e-6)  # policy == reference: log 2
    steps = batches(groups, 4)
    assert all(sum(len(g.pairs) for g in step) >= 4 for step in steps[:-1])
    assert sum(len(g.pairs) for step in steps for g in step) == len(rows)
