"""Shared-prefix packed CAPO scoring gives the same per-pair log-probs as scoring every pair on its own."""

from __future__ import annotations

import pytest

from capo.data.datasets import load_task_data
from capo.train.packed import batches, dpo_sigmoid_losses, group_pairs, pack, pair_logps
from capo.train.pairs import capo_pairs, split_prompt_completion


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


def test_packed_gradients_equal_per_pair_gradients(corpus_lm):
    """Sharing the prompt and chosen forward passes changes nothing about the DPO gradient of a batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(corpus_lm),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    rows = capo_pairs(load_task_data("nli").items("train")[:4], "A1", rejected_valid="any")
    trainable = [p for p in model.parameters() if p.requires_grad]

    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in trainable]

    packed = pack(group_pairs(rows, tokenizer))
    with torch.no_grad(), model.disable_adapter():
        reference = pair_logps(model, packed)
    shared = gradients(dpo_sigmoid_losses(pair_logps(model, packed), reference, 0.1).mean())

    def logp(prompt, completion):
        logps = torch.log_softmax(model(torch.tensor([prompt + completion])).logits[0].float(), -1)
        return sum(logps[len(prompt) + i - 1, t] for i, t in enumerate(completion))

    losses = []
    for k, row in enumerate(packed["pair_rows"]):
        prompt, c = split_prompt_completion(tokenizer, rows[row]["prompt"], rows[row]["chosen"])
        _, r = split_prompt_completion(tokenizer, rows[row]["prompt"], rows[row]["rejected"])
        ref = (reference[0][k : k + 1], reference[1][k : k + 1])
        losses.append(dpo_sigmoid_losses((logp(prompt, c)[None], logp(prompt, r)[None]), ref, 0.1))
    separate = gradients(torch.cat(losses).mean())
    for a, b in zip(shared, separate, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-3)
    assert any(a.abs().max() > 1e-6 for a in shared)


def test_capo_recipe_with_shared_prefix_trains(corpus_lm, tmp_path):
    """`recipes/capo.py --shared_prefix true`: the DPOTrainer subclass learns and saves a plain LoRA adapter."""
    import importlib.util
    import json

    from conftest import ROOT
    from peft import PeftConfig

    spec = importlib.util.spec_from_file_location("recipe_capo_packed", ROOT / "recipes" / "capo.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "packed"
    recipe.main([
        "--model_name_or_path", str(corpus_lm), "--output_dir", str(out), "--annotator", "A1", "--init_from", "base",
        "--shared_prefix", "true", "--bf16", "false", "--gradient_checkpointing", "false", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--lora_r", "8", "--lora_alpha", "16",
        "--max_train_rows", "6", "--max_eval_rows", "6", "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--max_steps", "6", "--logging_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--loss_type", "sigmoid",
    ])
    state = json.loads((out / "trainer_state.json").read_text())
    logs = [row for row in state["log_history"] if "loss" in row]
    assert abs(logs[0]["loss"] - 0.6931) < 1e-3 and abs(logs[0]["rewards/margins"]) < 1e-5  # fresh LoRA = base
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.05 and logs[-1]["rewards/accuracies"] > 0.5
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["shared_prefix"] is True and "eval_rewards/accuracies" in manifest["metrics"]
    assert not PeftConfig.from_pretrained(out).modules_to_save and not (out / "ref").exists()
