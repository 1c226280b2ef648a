"""An offline causal LM built from scratch on the project's own corpus (no model hub needed).

Byte-level BPE tokenizer (`tokenizers`) with a chat template, a small Llama (`transformers`), pre-trained with the
HF `Trainer` for a fixed number of optimizer steps on CPU (optionally cut short by a time limit), saved with `save_pretrained` so that
`AutoModelForCausalLM.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)` load it like any hub model.

The corpus is the chat-formatted annotations of *training-split* items only (VariErr split with seed 0, LeWiDi
Paraphrase train), plus the released LLM explanations, so held-out human explanations are never pre-trained on.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from capo.data.prompts import prompt_messages, response_messages
from capo.precision import resolve_bf16

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# `{% generation %}` marks the assistant's tokens so TRL's assistant-only loss works with this template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class CorpusLMConfig:
    vocab_size: int = 4096
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    seq_len: int = 256
    batch_size: int = 16
    learning_rate: float = 3e-3
    max_steps: int = 220  # ~100 s on 2 cores; the cosine schedule should finish, so steps, not seconds, bound it
    max_seconds: float | None = 150.0  # a safety stop on slow or shared machines (whichever comes first); None: none
    bf16: bool | str = "auto"  # bf16 autocast where the CPU computes bf16 natively (capo.precision), else fp32
    seed: int = 0
    split_seed: int = 0  # the VariErr split whose train items make up the corpus


SIZES = {
    "default": CorpusLMConfig(),
    # For unit tests: tiny but a real Llama with the same tokenizer and template. Bounded by steps only, so the
    # model the tests get is the same however loaded the machine is (120 steps: ~5 s of training on 2 idle cores).
    "test": CorpusLMConfig(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, seq_len=128,
        batch_size=8, learning_rate=5e-3, max_steps=120, max_seconds=None,
        bf16=False,  # fp32 on every CPU: the tests' model must not depend on which kind of CPU built it
    ),
}


def corpus_documents(split_seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) documents as chat message lists rendered later; held-out = VariErr dev items."""
    from capo.data.formats.common import MODEL_EXPLANATIONS_DIR
    from capo.data.formats.mjd_files import load_model_explanations
    from capo.data.formats.varierr import load_varierr
    from capo.data.registry import load_items
    from capo.data.splits import split_items

    varierr = load_varierr()
    split = split_items(varierr, seed=split_seed)
    train_ids, dev_ids = set(split.train), set(split.dev)
    train, held_out = [], []
    for item in varierr:
        target = train if item.id in train_ids else held_out if item.id in dev_ids else None
        if target is not None:
            target.extend(prompt_messages(item) + response_messages(a.label, a.explanation) for a in item.annotations)
    for item in load_items("lewidi-par-train"):
        train.extend(prompt_messages(item) + response_messages(a.label, a.explanation) for a in item.annotations)
    # LLM explanations (machine style, any label): more English for the model, no human annotator's text.
    by_id = {item.id: item for item in varierr}
    for path in sorted(MODEL_EXPLANATIONS_DIR.glob("*/Label-Free-*.json")):
        for item_id, pairs in load_model_explanations(path).items():
            if item_id in train_ids:
                train.extend(prompt_messages(by_id[item_id]) + response_messages(lab, text) for text, lab in pairs)
    return train, held_out


def pretraining_item_ids(model_path: str | Path) -> set[str]:
    """Ids of the items whose human explanations the corpus LM at `model_path` was pre-trained on (VariErr train
    items of its split seed, LeWiDi Paraphrase train); empty for any other model (e.g. a hub id)."""
    from capo.data.formats.varierr import load_varierr
    from capo.data.registry import load_items
    from capo.data.splits import split_items

    info = Path(model_path) / "corpus_lm.json"
    if not info.is_file():
        return set()
    split_seed = json.loads(info.read_text())["config"]["split_seed"]
    return set(split_items(load_varierr(), seed=split_seed).train) | {i.id for i in load_items("lewidi-par-train")}


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with the chat template and special tokens, as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token=None,
        padding_side="left",  # generation and last-position scoring read the final position
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _pack(token_lists: list[list[int]], seq_len: int) -> list[list[int]]:
    stream = [t for tokens in token_lists for t in tokens]
    return [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def build_corpus_lm(output_dir: str | Path, config: CorpusLMConfig = SIZES["default"], log=print) -> dict:
    """Train tokenizer + model, save both to `output_dir` (atomically: a temp folder renamed at the end)."""
    import shutil

    import torch
    from datasets import Dataset
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    set_seed(config.seed)
    output_dir = Path(output_dir)
    train_docs, held_docs = corpus_documents(config.split_seed)
    random.Random(config.seed).shuffle(train_docs)
    t0 = time.time()
    probe = train_tokenizer(["x"], 300)  # only to render the chat template into text
    render = lambda docs: [probe.apply_chat_template(d, tokenize=False) for d in docs]
    train_texts, held_texts = render(train_docs), render(held_docs)
    tokenizer = train_tokenizer(train_texts, config.vocab_size)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    encode = lambda texts: [ids + [eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    train_blocks = _pack(encode(train_texts), config.seq_len)
    held_blocks = _pack(encode(held_texts), config.seq_len)[:64]
    log(f"corpus: {len(train_docs)} documents, {len(train_blocks)} blocks of {config.seq_len} tokens; "
        f"tokenizer {len(tokenizer)} tokens in {time.time() - t0:.1f}s")

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )

    class TimeLimit(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if time.time() - start > config.max_seconds:
                control.should_training_stop = True

    work = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(50, config.max_steps // 10),
        max_steps=config.max_steps,
        weight_decay=0.01,
        bf16=resolve_bf16(config.bf16, "cpu"),
        use_cpu=not torch.cuda.is_available(),
        logging_steps=max(1, config.max_steps // 20),
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    as_dataset = lambda blocks: Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    trainer = Trainer(model=model, args=args, train_dataset=as_dataset(train_blocks), eval_dataset=as_dataset(held_blocks),
                      callbacks=[TimeLimit()] if config.max_seconds is not None else [])
    start = time.time()
    result = trainer.train()
    seconds = time.time() - start
    held_out_loss = trainer.evaluate()["eval_loss"]
    model = trainer.model.float()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    shutil.rmtree(work / "trainer", ignore_errors=True)
    summary = {
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result.global_step,
        "train_seconds": round(seconds, 1),
        "train_loss": result.training_loss,
        "held_out_loss": held_out_loss,
        "held_out_perplexity": math.exp(held_out_loss),
        "corpus_documents": len(train_docs),
    }
    (work / "corpus_lm.json").write_text(json.dumps(summary, indent=2) + "\n")
    if output_dir.exists():
        shutil.rmtree(output_dir)
    work.rename(output_dir)
    log(f"corpus LM: {summary['parameters'] / 1e6:.2f}M parameters, {summary['steps']} steps in {seconds:.0f}s, "
        f"held-out loss {held_out_loss:.3f} -> {output_dir}")
    return summary


def config_for(size: str, **overrides) -> CorpusLMConfig:
    from capo.errors import DataError

    if size not in SIZES:
        raise DataError(f"unknown corpus LM size {size!r} (valid: {', '.join(SIZES)})")
    return replace(SIZES[size], **overrides)
