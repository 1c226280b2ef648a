"""Accelerator memory plans, made before any model loads, and the refusal of a run that cannot fit the visible GPU.

From a model's config (no weights), the dtype, LoRA, batch, length and checkpointing: an estimate of what one training
step or one inference batch holds on the GPU, and, where it exceeds the visible GPU, one line that names the option
to change (the first single change that makes it fit). CPU runs are not planned.

The shape is the model's `transformers.AutoConfig` (a local folder; a hub id's config where reachable), or, for the
documented models, a config shipped in `recipes/model_configs/` (its `capo_hub_ids` name the hub ids it stands for;
any other file: `model_config`).

Estimates in bytes. w, a: bytes per element of the weights' dtype and of the activations' (bf16 mixed precision: 2
even over fp32 weights); h hidden size, q = heads x head_dim, kv = kv heads x head_dim, i intermediate size, V the
vocabulary, T the tokens of one step (every row at max_length: the longest batch the options allow), L blocks.
- weights: parameters x w; QLoRA (load_in_4bit): the linear layers at 0.55 bytes a parameter (4 bits and their
  scales), embeddings and head at w.
- LoRA: r x (in + out) per adapted projection per block. The adapter is fp32, and with its gradient and AdamW's two
  moments costs 16 bytes a trainable parameter (CAPO: 4 more for the frozen SFT adapter, its reference).
- activations, what backward keeps: T x a x (4h + 2q + 2kv + 4i) per block (the two norms' inputs and outputs, q, k,
  v and the attention output, the MLP's gate, up, activation and product; SDPA keeps no L x L matrix), plus the
  inputs LoRA dropout copies. Gradient checkpointing keeps T x a x h per block (its input), plus one block recomputed.
- logits: T x V x (a + 8): the logits, the fp32 copy the loss reads and the log-softmax it keeps for backward.
- shared-prefix CAPO (`capo.train.packed`): one packed row of up to `GROUP_PAIRS` + 1 responses per group, and its
  dense L x L attention mask, T^2 x a.
- evaluation: weights + one block's activations + the logits of an eval batch, no gradients.
- inference: weights + KV cache T x L x 2kv x a + one block's prefill working set T x a x (2h + 3i) + the fp32 logits
  of each row's last position. Adapters (tens to hundreds of MB each) are not counted.
- a 1 GiB reserve: CUDA context, cuBLAS workspaces, allocator slack.
These are estimates, not measurements: they say whether a run can fit at all, not where its last gigabyte goes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from capo.errors import DataError

GIB = 1024**3
RESERVE = 1 * GIB
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QLORA_BYTES = 0.55  # NF4: 4 bits a weight plus the block scales (double-quantised)
INT8_BYTES = 1.05  # LLM.int8: a byte a weight plus the row scales
UNSET_LENGTH = 2048  # an unset max_length: TRL pads each batch to its longest row, so the full context overstates it
ADAM_BYTES = 16  # fp32 adapter weight, its gradient, AdamW's two moments
GROUP_PAIRS = 3  # a shared-prefix group: one chosen response against at most the other three annotators'
PROMPT_TOKENS = 256  # an instruction and one item, as `capo.data.prompts.user_prompt` renders them
EXAMPLE_TOKENS = 100  # one worked example (inputs, label, explanation)
MJD_PROMPT_TOKENS = 512  # an MJD prompt: the item, its options and up to four explanations
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "model_configs"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def gib(n: float) -> str:
    return f"{n / GIB:.1f}"


@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only transformer (Llama, Qwen, Mistral, ...) that its memory follows."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    max_positions: int

    @classmethod
    def of(cls, config, name: str) -> Shape:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        return cls(name=name, hidden=text.hidden_size, layers=text.num_hidden_layers, heads=heads,
                   kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                   head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
                   intermediate=text.intermediate_size, vocab=text.vocab_size,
                   tied=bool(getattr(config, "tie_word_embeddings", False)),
                   max_positions=getattr(text, "max_position_embeddings", None) or 4096)

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one block."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(n_in * n_out for n_in, n_out in self.projections().values())

    @property
    def other_params(self) -> int:  # embeddings, head (unless tied), norms
        return self.vocab * self.hidden * (1 if self.tied else 2) + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, r: int, targets) -> int:
        return self.layers * sum(r * (n_in + n_out) for name, (n_in, n_out) in self.projections().items()
                                 if _targeted(name, targets))

    def block_activations(self, dropout_targets=None) -> int:
        """Elements backward keeps per token in one block (plus the inputs LoRA dropout copies)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        kept = 4 * h + 2 * q + 2 * kv + 4 * self.intermediate
        if dropout_targets is not None:
            kept += sum(n_in for name, (n_in, _) in self.projections().items() if _targeted(name, dropout_targets))
        return kept


def _hashable(targets):  # a plan is a dict key (one plan per distinct set of options)
    return tuple(targets) if isinstance(targets, list) else targets


def _targeted(name: str, targets) -> bool:
    """Whether LoRA `targets` (peft's: "all-linear", a list of module names, or one regular expression) adapt this
    projection."""
    if targets in (None, "all-linear", ["all-linear"], ("all-linear",)):
        return True
    if isinstance(targets, str):
        return re.search(targets, f"model.layers.0.self_attn.{name}") is not None or targets == name
    return any(name == t or name.endswith(str(t)) for t in targets)


def shipped_configs() -> dict[str, Path]:
    """Hub id (lower case) -> the config in recipes/model_configs/ that stands for it."""
    found = {}
    for path in sorted(MODEL_CONFIGS.glob("*.json")):
        for hub_id in json.loads(path.read_text(encoding="utf-8")).get("capo_hub_ids", []):
            found[hub_id.lower()] = path
    return found


def model_shape(model: str, model_config: str | None = None, **config_kwargs) -> tuple[Shape, str]:
    """(shape, where its numbers come from): `model_config`, else a shipped config for this hub id, else the model's
    own config (a folder, the hub or its cache; no weights)."""
    from transformers import AutoConfig

    source = model_config or shipped_configs().get(str(model).lower())
    try:
        config = AutoConfig.from_pretrained(str(source or model), **({} if source else config_kwargs))
    except (OSError, ValueError) as err:
        where = {"path": model_config} if model_config else {"field": "model"}
        raise DataError(f"no config for the memory plan of {model} ({' '.join(str(err).split())[:160]}): pass "
                        f"model_config, e.g. {MODEL_CONFIGS.name}/llama-3-8b.json", **where) from None
    return Shape.of(config, Path(str(source)).stem if source else str(model)), str(source or model)


def planned_dtype(dtype: str | None) -> str:
    """The weights' dtype a GPU run loads: auto -> `capo.precision`'s choice on the visible GPU (bf16 where none is
    visible: a dry run plans for a bf16 GPU); unset -> float32, TRL's default."""
    if dtype in (None, "float32"):
        return "float32"
    if dtype == "auto":
        from capo.precision import native_bf16

        return "bfloat16" if device_memory() is None or native_bf16("cuda") else "float32"
    if dtype not in DTYPE_BYTES:
        raise DataError(f"unknown dtype {dtype!r} (valid: auto, {', '.join(DTYPE_BYTES)})", field="dtype")
    return dtype


@dataclass(frozen=True)
class Plan:
    """One estimate: what it is for, and its parts in bytes."""

    what: str
    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values()) + RESERVE

    def line(self) -> str:
        parts = " + ".join(f"{name} {gib(n)}" for name, n in self.parts.items() if n >= 0.05 * GIB)
        return f"{self.what}: {parts} + reserve {gib(RESERVE)} = {gib(self.total)} GiB"


@dataclass(frozen=True)
class Training:
    """What one SFT or CAPO step holds; its fields are the options a refusal may name."""

    kind: str  # sft | capo | capo shared-prefix
    dtype: str  # the weights'
    bf16: bool  # mixed precision: 16-bit activations over fp32 weights
    per_device_train_batch_size: int
    per_device_eval_batch_size: int  # 0: no evaluation
    max_length: int  # 0: unset (planned at UNSET_LENGTH or the model's longest, whichever is shorter)
    gradient_checkpointing: bool
    lora_r: int
    lora_target_modules: object
    lora_dropout: float
    load_in_4bit: bool
    load_in_8bit: bool = False

    @classmethod
    def from_args(cls, training_args, model_args, *, preference: bool = False, shared_prefix: bool = False
                  ) -> Training:
        """From a recipe's parsed TRL `SFTConfig` / `DPOConfig` and `ModelConfig` (`preference`: CAPO)."""
        kind = "capo shared-prefix" if shared_prefix else "capo" if preference else "sft"
        strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
        return cls(kind=kind, dtype=planned_dtype(model_args.dtype),
                   bf16=bool(training_args.bf16 or training_args.fp16),
                   per_device_train_batch_size=training_args.per_device_train_batch_size,
                   per_device_eval_batch_size=0 if strategy == "no" else training_args.per_device_eval_batch_size,
                   max_length=training_args.max_length or 0,  # None: the model's longest (`_tokens`)
                   gradient_checkpointing=bool(training_args.gradient_checkpointing), lora_r=model_args.lora_r,
                   lora_target_modules=_hashable(model_args.lora_target_modules or "all-linear"),
                   lora_dropout=model_args.lora_dropout, load_in_4bit=bool(model_args.load_in_4bit),
                   load_in_8bit=bool(getattr(model_args, "load_in_8bit", False)))

    def _weights(self, shape: Shape) -> float:
        w = DTYPE_BYTES[self.dtype]
        linear = QLORA_BYTES if self.load_in_4bit else INT8_BYTES if self.load_in_8bit else w
        return shape.linear_params * linear + shape.other_params * w

    def _tokens(self, batch: int, shape: Shape) -> tuple[int, int]:
        """(rows, tokens) of a batch: TRL's DPO pads chosen and rejected to one batch of 2 x batch rows; the
        shared-prefix trainer packs the groups into one row."""
        length = self.max_length or min(UNSET_LENGTH, shape.max_positions)
        if self.kind == "capo shared-prefix":
            return 1, batch * (GROUP_PAIRS + 1) * length
        rows = 2 * batch if self.kind == "capo" else batch
        return rows, rows * length

    def estimate(self, shape: Shape) -> list[Plan]:
        a = 2 if self.bf16 or self.dtype != "float32" else 4
        weights = self._weights(shape)
        lora = shape.lora_params(self.lora_r, self.lora_target_modules)
        dropout = self.lora_target_modules if self.lora_dropout > 0 else None
        block = shape.block_activations(dropout) * a
        rows, tokens = self._tokens(self.per_device_train_batch_size, shape)
        kept = (tokens * shape.hidden * a * shape.layers + tokens * block if self.gradient_checkpointing
                else tokens * block * shape.layers)
        train = {"weights": weights, "LoRA + AdamW": lora * (ADAM_BYTES + (4 if self.kind != "sft" else 0)),
                 "activations": kept, "logits": tokens * shape.vocab * (a + 8)}
        if self.kind == "capo shared-prefix":
            train["dense mask"] = tokens * tokens * a
        plans = [Plan(f"{self.kind} step, {rows} x {tokens // rows} tokens", train)]
        if self.per_device_eval_batch_size:  # 0: no evaluation (eval_strategy no)
            eval_rows, eval_tokens = self._tokens(self.per_device_eval_batch_size, shape)
            evaluation = {"weights": weights, "activations": eval_tokens * block,
                          "logits": eval_tokens * shape.vocab * (a + 8)}
            plans.append(Plan(f"{self.kind} eval, {eval_rows} x {eval_tokens // eval_rows} tokens", evaluation))
        return plans

    def knobs(self) -> Iterator[tuple[str, Training, str]]:
        """One change at a time, least intrusive first: (option, changed plan, advice)."""
        if not self.gradient_checkpointing:
            yield ("gradient_checkpointing", replace(self, gradient_checkpointing=True),
                   "turn gradient_checkpointing on")
        if self.dtype == "float32" and not self.load_in_4bit:
            yield "dtype", replace(self, dtype="bfloat16", bf16=True), "load the weights in bfloat16 (dtype bfloat16)"
        batch = self.per_device_train_batch_size
        for smaller in _halves(batch):
            same = f"and gradient_accumulation_steps x{batch // smaller}: the same effective batch"
            yield ("per_device_train_batch_size", replace(self, per_device_train_batch_size=smaller),
                   f"per_device_train_batch_size {smaller} ({same})")
        for smaller in _halves(self.per_device_eval_batch_size):
            yield ("per_device_eval_batch_size", replace(self, per_device_eval_batch_size=smaller),
                   f"per_device_eval_batch_size {smaller}")
        for length in _halves(self.max_length or 0, floor=128):
            yield "max_length", replace(self, max_length=length), f"max_length {length} (longer rows are cut)"
        if not self.load_in_4bit:
            yield "load_in_4bit", replace(self, load_in_4bit=True), "QLoRA: load_in_4bit true (needs bitsandbytes)"


@dataclass(frozen=True)
class Inference:
    """What one inference batch holds: `rows` prompts of `tokens_per_row` (prompt and new tokens), at most
    `max_tokens` through a forward pass at once."""

    what: str
    dtype: str
    batch_size: int
    tokens_per_row: int
    max_tokens: int | None = None

    @classmethod
    def for_generation(cls, args) -> Inference:
        """`recipes/generate.py`'s arguments: prompts of an instruction, the item and `few_shot` examples (or
        `max_prompt_tokens`), then `max_new_tokens`."""
        prompt = args.max_prompt_tokens or PROMPT_TOKENS + EXAMPLE_TOKENS * args.few_shot
        return cls("generation", planned_dtype(args.dtype), args.batch_size, prompt + args.max_new_tokens)

    @classmethod
    def for_mjd(cls, args) -> Inference:
        """`recipes/mjd.py`'s arguments: `batch_size` prompts, at most `max_batch_tokens` new tokens a pass."""
        return cls("mjd", planned_dtype(args.dtype), args.batch_size, MJD_PROMPT_TOKENS, args.max_batch_tokens)

    def estimate(self, shape: Shape) -> list[Plan]:
        a = DTYPE_BYTES[self.dtype]
        tokens = self.batch_size * self.tokens_per_row
        passing = min(tokens, self.max_tokens or tokens)
        parts = {"weights": shape.params * a, "KV cache": tokens * shape.layers * 2 * shape.kv_heads * shape.head_dim * a,
                 "prefill": passing * a * (2 * shape.hidden + 3 * shape.intermediate),
                 "logits": self.batch_size * shape.vocab * 4}
        return [Plan(f"{self.what}, {self.batch_size} x {self.tokens_per_row} tokens", parts)]

    def knobs(self) -> Iterator[tuple[str, Inference, str]]:
        if self.dtype == "float32":
            yield "dtype", replace(self, dtype="bfloat16"), "dtype bfloat16"
        for smaller in _halves(self.batch_size):
            yield "batch_size", replace(self, batch_size=smaller), f"batch_size {smaller}"
        if self.max_tokens:
            for smaller in _halves(self.max_tokens, floor=256):
                yield "max_batch_tokens", replace(self, max_tokens=smaller), f"max_batch_tokens {smaller}"


def _halves(n: int, floor: int = 1) -> Iterator[int]:
    while n // 2 >= floor:
        n //= 2
        yield n


def worst(plans: list[Plan]) -> Plan:
    return max(plans, key=lambda p: p.total)


def advice(shape: Shape, spec: Training | Inference, budget: float) -> tuple[str, str]:
    """(option, advice): the first single change that brings `spec` within `budget` bytes."""
    for option, changed, text in spec.knobs():
        if worst(changed.estimate(shape)).total <= budget:
            return option, text
    return "model", "no single option fits it: a smaller model, or shard it over several GPUs (FSDP)"


def device_memory() -> tuple[str, int] | None:
    """(name, total bytes) of the CUDA device this process's models load onto (`capo.precision.resolve_device`: under
    accelerate / torchrun, each rank's own); None where that is no CUDA device."""
    import torch

    from capo.precision import resolve_device

    device = resolve_device()
    if device.type != "cuda":
        return None
    properties = torch.cuda.get_device_properties(device)
    return properties.name, properties.total_memory


def fits(shape: Shape, spec: Training | Inference, device: tuple[str, int]) -> tuple[list[Plan], DataError | None]:
    """(the plans, None when they fit `device`, else the refusal: the plan, the device, and the option to change)."""
    plans = spec.estimate(shape)
    name, total = device
    if worst(plans).total <= total:
        return plans, None
    option, text = advice(shape, spec, total)
    return plans, DataError(f"{worst(plans).line()} ({shape.name}) does not fit the GPU ({name}, {gib(total)} GiB): "
                            f"{text}", field=option)


def check_memory(model: str, spec: Training | Inference | Callable[[], Training | Inference],
                 log: Callable[[str], None] = print, **config_kwargs) -> list[Plan] | None:
    """Before any model loads: plan `spec` for `model` on the visible GPU, print the plan (the first process), and
    refuse in one line a run that cannot fit. No GPU visible: nothing is planned (None)."""
    device = device_memory()
    if device is None:
        return None
    shape, _ = model_shape(model, **config_kwargs)
    plans, refusal = fits(shape, spec() if callable(spec) else spec, device)
    if refusal is not None:
        raise refusal
    if os.environ.get("LOCAL_RANK", "0") == "0":
        log(f"memory plan ({shape.name} on {device[0]}, {gib(device[1])} GiB): " + "; ".join(p.line() for p in plans))
    return plans


def plan_training(training_args, model_args, log: Callable[[str], None] = print, **kind) -> list[Plan] | None:
    """`check_memory` of a recipe's SFT or CAPO run (`kind`: `Training.from_args`'s options); CPU runs: None."""
    if training_args.use_cpu:
        return None
    return check_memory(model_args.model_name_or_path, lambda: Training.from_args(training_args, model_args, **kind),
                        log, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code)

