"""Shared-prefix packed CAPO: the packed forward scores every pair as if alone, the trainer's loss and gradients equal
stock TRL `DPOTrainer`'s on the same batch and adapter, unsupported DPOConfig options are refused, and the recipe
path trains and saves an adapter whose rewards an independent scorer reproduces. The GPU path: chunked response
log-probs and FlexAttention block masks equal the dense path, and DataParallel is refused."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import load_script

from capo.data.datasets import load_task_data
from capo.errors import DataError
from capo.train.packed import batches, group_pairs, pack, pair_logps
from capo.train.pairs import capo_pairs, split_prompt_completion


def sequence_logp(model, tokenizer, prompt, completion) -> float:
    """Summed log-prob of `completion` after `prompt`, one unpacked sequence (independent of capo.train.packed)."""
    import torch

    p, c = split_prompt_completion(tokenizer, prompt, completion)
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
    return sum(logps[len(p) + i - 1, t].item() for i, t in enumerate(c))


def independent_rewards(corpus_lm, policy_dir, reference_dir, rows, beta: float) -> dict:
    """Mean DPO rewards of `rows` for a saved adapter against a reference adapter (None: the base model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(corpus_lm), str(policy_dir)).eval()
    if reference_dir is not None:
        model.load_adapter(str(reference_dir), adapter_name="reference")

    def logps(side):
        policy = [sequence_logp(model, tokenizer, r["prompt"], r[side]) for r in rows]
        if reference_dir is None:
            with model.disable_adapter():
                reference = [sequence_logp(model, tokenizer, r["prompt"], r[side]) for r in rows]
        else:
            model.set_adapter("reference")
            reference = [sequence_logp(model, tokenizer, r["prompt"], r[side]) for r in rows]
            model.set_adapter("default")
        return [beta * (a - b) for a, b in zip(policy, reference, strict=True)]

    chosen, rejected = logps("chosen"), logps("rejected")
    mean = lambda xs: sum(xs) / len(xs)
    return {"rewards/chosen": mean(chosen), "rewards/margins": mean([c - r for c, r in zip(chosen, rejected)])}


def test_packed_logps_match_separate_sequences_sdpa_and_eager(corpus_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    rows = capo_pairs(load_task_data("nli").items("train")[:10], "A3", rejected_valid="any")
    groups = group_pairs(rows, tokenizer)
    assert len(groups) < len(rows) and sorted(i for g in groups for i in g.pairs) == list(range(len(rows)))
    packed = pack(groups)
    eager = AutoModelForCausalLM.from_pretrained(corpus_lm, attn_implementation="eager").eval()
    sdpa = AutoModelForCausalLM.from_pretrained(corpus_lm, attn_implementation="sdpa").eval()
    with torch.no_grad():
        by_impl = {"eager": pair_logps(eager, packed), "sdpa": pair_logps(sdpa, packed)}  # additive / boolean mask
    for k, row in enumerate(packed["pair_rows"]):
        chosen = sequence_logp(eager, tokenizer, rows[row]["prompt"], rows[row]["chosen"])
        rejected = sequence_logp(eager, tokenizer, rows[row]["prompt"], rows[row]["rejected"])
        for chosen_logps, rejected_logps in by_impl.values():
            assert chosen_logps[k].item() == pytest.approx(chosen, abs=1e-3)
            assert rejected_logps[k].item() == pytest.approx(rejected, abs=1e-3)
    steps = batches(groups, 4)
    assert all(sum(len(g.pairs) for g in step) >= 4 for step in steps[:-1])
    assert sum(len(g.pairs) for step in steps for g in step) == len(rows)


def test_packed_gradients_equal_per_pair_gradients(corpus_lm):
    """Sharing the prompt and chosen forward passes changes nothing about the DPO gradient of a batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capo.train.packed import dpo_sigmoid_losses

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


def test_packed_trainer_loss_equals_trl_dpo_loss(corpus_lm, tmp_path):
    """SFT-adapter start (its frozen copy is the reference), sigmoid + sft losses, max_length that drops one item's
    pairs and truncates the others: the packed trainer's loss, metrics and gradients equal TRL's on the same batch."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from capo.train.packed_trainer import SharedPrefixDPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    torch.manual_seed(0)  # a non-zero "SFT adapter", saved as init_from sft would find it
    get_peft_model(AutoModelForCausalLM.from_pretrained(corpus_lm),
                   LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(tmp_path / "sft")
    rows = capo_pairs(load_task_data("nli").items("train")[3:7], "A2")
    prompts = [len(split_prompt_completion(tokenizer, r["prompt"], r["chosen"])[0]) for r in rows]
    max_length = 128  # drops 5 of these 11 pairs, truncates the other 6 (and leaves no chosen == rejected tie)
    assert max(prompts) >= max_length > min(prompts)
    config = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], beta=0.1,
                       loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], max_length=max_length)

    def loss_and_gradients(trainer_class):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(corpus_lm), tmp_path / "sft",
                                          is_trainable=True)
        trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # move the policy away from its reference, identically for both trainers
            for name, param in trainer.model.named_parameters():
                if ".default." in name:
                    param.add_(0.05 * torch.randn(param.shape, generator=generator))
        data = trainer.train_dataset
        batch = trainer._prepare_inputs(trainer.data_collator([data[i] for i in range(len(data))]))
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        trainer.log({})  # the metrics as the trainer logs them
        metrics = {k: v for k, v in trainer.state.log_history[-1].items() if k.startswith(("rewards", "logps"))}
        grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
        return loss.item(), metrics, grads, len(data)

    trl_loss, trl_metrics, trl_grads, trl_pairs = loss_and_gradients(DPOTrainer)
    loss, metrics, grads, groups = loss_and_gradients(SharedPrefixDPOTrainer)
    assert trl_pairs == sum(p < max_length for p in prompts) and groups < trl_pairs
    assert len(trl_metrics) == 6 and abs(trl_metrics["rewards/margins"]) > 1e-2  # policy != reference
    assert loss == pytest.approx(trl_loss, rel=1e-5)
    assert metrics == pytest.approx(trl_metrics, rel=1e-4, abs=1e-5)
    assert grads.keys() == trl_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, trl_grads[name], rtol=1e-3, atol=1e-6), name


@pytest.mark.parametrize("option, value, named", [
    ("loss_type", ["ipo"], "loss_type ipo"),
    ("loss_type", ["sigmoid", "robust"], "loss_type sigmoid robust"),
    ("label_smoothing", 0.1, "label_smoothing 0.1"),
    ("f_divergence_type", "js_divergence", "f_divergence_type js_divergence"),
    ("ld_alpha", 0.5, "ld_alpha 0.5"),
    ("use_weighting", True, "use_weighting"),
    ("padding_free", True, "padding_free"),
    ("pad_to_multiple_of", 8, "pad_to_multiple_of 8"),
    ("precompute_ref_log_probs", True, "precompute_ref_log_probs"),
    ("sync_ref_model", True, "sync_ref_model"),
    ("truncation_mode", "keep_end", "truncation_mode keep_end"),
])
def test_unsupported_dpo_options_are_refused(tmp_path, option, value, named):
    import warnings

    from trl import DPOConfig

    from capo.train.packed_trainer import SharedPrefixDPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keep_end's deprecation warning
        config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **{option: value})
    with pytest.raises(DataError) as error:
        SharedPrefixDPOTrainer(model="unused", args=config, train_dataset=None)
    message = str(error.value)
    assert named in message and "\n" not in message and message.count("does not implement") == 1


def test_capo_recipe_with_shared_prefix_trains(corpus_lm, tmp_path, capsys):
    """`recipes/capo.py --shared_prefix true`: learns, saves a plain LoRA adapter whose held-out rewards against the
    base model an unpacked scorer reproduces, and refuses an unsupported loss in one line."""
    from peft import PeftConfig

    from capo.train.explainers import CapoArguments, build_pair_datasets

    recipe = load_script("recipes/capo.py")
    out = tmp_path / "packed"
    args = ["--model_name_or_path", str(corpus_lm), "--output_dir", str(out), "--annotator", "A1",
            "--init_from", "base", "--shared_prefix", "true", "--bf16", "false", "--gradient_checkpointing", "false",
            "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--lora_r", "8",
            "--lora_alpha", "16", "--max_train_rows", "6", "--max_eval_rows", "6",
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--lr_scheduler_type", "constant",
            "--max_steps", "6", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no"]
    recipe.main(args + ["--loss_type", "sigmoid"])
    state = json.loads((out / "trainer_state.json").read_text())
    logs = [row for row in state["log_history"] if "loss" in row]
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.05 and logs[-1]["rewards/accuracies"] > 0.5
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["shared_prefix"] is True
    assert not PeftConfig.from_pretrained(out).modules_to_save and not (out / "ref").exists()
    _, held, _ = build_pair_datasets(CapoArguments(annotator="A1", max_eval_rows=6))
    expected = independent_rewards(corpus_lm, out, None, list(held), beta=0.1)
    metrics = manifest["metrics"]
    assert abs(expected["rewards/margins"]) > 1e-3
    assert metrics["eval_rewards/margins"] == pytest.approx(expected["rewards/margins"], abs=1e-4)
    assert metrics["eval_rewards/chosen"] == pytest.approx(expected["rewards/chosen"], abs=1e-4)

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(args + ["--output_dir", str(tmp_path / "x"), "--loss_type", "sigmoid", "hinge"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: shared-prefix training") and "loss_type sigmoid hinge" in err
    assert not (tmp_path / "x").exists()


def dense_pair_logps(model, packed):
    """The dense path the memory-efficient one replaces: every position's logits, a full log-softmax, then gather."""
    import torch

    from capo.train.packed import block_attention_mask

    mask = block_attention_mask(packed, "sdpa")
    logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], attention_mask=mask,
                   use_cache=False).logits[0].float()
    token = logits.log_softmax(-1)[packed["pred"], packed["target"]]
    seg = torch.zeros(packed["n_segments"]).index_add(0, packed["segment"], token)
    return seg[packed["chosen_segment"]], seg[packed["rejected_segment"]]


def _lora_model_and_row(corpus_lm, attn_implementation: str = "sdpa"):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32, attn_implementation=attn_implementation)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    rows = capo_pairs(load_task_data("nli").items("train")[:6], "A2", rejected_valid="any")
    return model, pack(group_pairs(rows, tokenizer))


def test_chunked_response_logps_equal_the_dense_path(corpus_lm, monkeypatch):
    """Log-probs at response positions only, a few positions per chunk (checkpointed), equal the full log-softmax
    path per pair (fp32, 1e-5), with the same gradients; so does the fallback on the model's own logits."""
    import torch

    from capo.train import packed as packed_module

    model, packed = _lora_model_and_row(corpus_lm)
    vocab = model.config.vocab_size
    monkeypatch.setattr(packed_module, "LOGIT_CHUNK", vocab * 7)  # 7 positions a chunk, a short last one
    assert len(packed["pred"]) > 14 and len(packed["pred"]) % 7
    heads = []
    chunked = packed_module.chunked_logps
    monkeypatch.setattr(packed_module, "chunked_logps", lambda logits_of, *a: heads.append(logits_of) or
                        chunked(logits_of, *a))
    trainable = [p for p in model.parameters() if p.requires_grad]

    def logps_and_gradients(path):
        model.zero_grad()
        chosen, rejected = path(model, packed)
        (chosen.sum() - 2 * rejected.sum()).backward()
        return torch.cat([chosen, rejected]).detach(), [p.grad.clone() for p in trainable]

    dense, dense_grads = logps_and_gradients(dense_pair_logps)
    for softcapping in (None, 30.0):  # 30.0: the fallback, on the model's logits (this Llama ignores the field)
        model.config.final_logit_softcapping = softcapping
        ours, grads = logps_and_gradients(pair_logps)
        assert isinstance(heads[-1], torch.nn.Module) is (softcapping is None)
        assert torch.allclose(ours, dense, rtol=1e-5, atol=0)  # sums near -270: 1e-5 absolute is one fp32 ulp
        for a, b in zip(grads, dense_grads, strict=True):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()  # fp32 rounding of gradients up to ~150


def _cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


@pytest.mark.heavy  # compiles the CPU FlexAttention kernel (~20 s cold): `make test-all`
@pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))),
                    reason="FlexAttention on the CPU is compiled to C++ (torch inductor): no C++ compiler here")
@pytest.mark.skipif(not _cpu_capability().startswith("AVX512"),
                    reason="torch 2.13's CPU FlexAttention kernel, compiled for AVX2, gives other values than the "
                           "dense mask (up to ~6 nats a pair, measured with ATEN_CPU_CAPABILITY=avx2); the trainer "
                           "uses FlexAttention on CUDA only, and this CPU check needs the AVX-512 kernel")
def test_flex_attention_block_mask_equals_the_dense_mask(corpus_lm):
    """FlexAttention with a BlockMask gives the dense mask's per-pair log-probs (forward: torch 2.13 has no
    FlexAttention backward on the CPU)."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    from capo.train.packed import block_attention_mask

    sdpa, packed = _lora_model_and_row(corpus_lm)
    flex, _ = _lora_model_and_row(corpus_lm, "flex_attention")
    mask = block_attention_mask(packed, "flex_attention")
    assert isinstance(mask, BlockMask) and mask.sparsity() > 0  # blocks across groups are skipped
    with torch.no_grad():
        dense = torch.cat(pair_logps(sdpa, packed))
        blocks = torch.cat(pair_logps(flex, packed, mask))
    assert torch.allclose(blocks, dense, rtol=1e-5, atol=0)


def test_the_trainer_keeps_the_dense_mask_on_the_cpu_and_uses_flex_attention_on_cuda(corpus_lm, monkeypatch):
    """On the CPU the trainer keeps the dense mask and refuses a flex_attention model (no backward there); on CUDA
    it switches an sdpa model to FlexAttention."""
    import torch

    from capo.train import packed as packed_module
    from capo.train.packed import training_attention

    sdpa, _ = _lora_model_and_row(corpus_lm)
    flex, _ = _lora_model_and_row(corpus_lm, "flex_attention")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training_attention(sdpa, cpu) == "sdpa"
    with pytest.raises(DataError, match="flex_attention cannot train on cpu") as err:
        training_attention(flex, cpu)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(packed_module, "flex_trains_on", lambda device: device.type == "cuda")  # CUDA + Triton, faked
    assert training_attention(sdpa, cuda) == training_attention(flex, cuda) == "flex_attention"


def test_several_gpus_in_one_process_are_refused(tmp_path):
    """Without `accelerate launch`, Trainer would wrap the model in DataParallel, which splits the packed row's 1-D
    index tensors along dim 0: refused in one line, before the model is touched."""
    from trl import DPOConfig

    from capo.train.packed_trainer import SharedPrefixDPOTrainer

    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    config._n_gpu = 2  # what TrainingArguments counts on a machine with two visible GPUs and one process
    with pytest.raises(DataError, match="sees 2 GPUs in one process.*accelerate launch") as err:
        SharedPrefixDPOTrainer(model="unused", args=config, train_dataset=None)
    assert "\n" not in str(err.value)
