"""Per-annotator explainers: SFT (TRL `SFTTrainer`) and CAPO (TRL `DPOTrainer` on cross-annotator pairs), with LoRA.

The recipes `recipes/sft.py` and `recipes/capo.py` parse `(ScriptArguments, CapoArguments, SFTConfig|DPOConfig,
ModelConfig)` with `trl.TrlParser` and call `train_sft` / `train_capo`. Every output folder ends up with the LoRA
adapter (no `modules_to_save`, so vLLM can load it), the tokenizer, `run_manifest.json` (with the `training_data` record
of `capo.data.heldout`: data set, content hash, split, the items trained on) and metrics; checkpoints are written
under it so a killed run resumes with `--resume_from_checkpoint true`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from capo.data.datasets import TaskData, load_task_data
from capo.data.heldout import RECORD, training_record
from capo.data.schema import check_annotator, label_space
from capo.data.validity import predicate
from capo.data.variants import HALVES, study_variant
from capo.errors import DataError
from capo.io import read_json
from capo.manifest import write_manifest
from capo.train.pairs import DEFAULT_VALIDITY, REJECTED_FROM, capo_pairs, for_annotators, sft_rows

INIT_FROM = ("sft", "base")


@dataclass
class CapoArguments:
    """Which annotator and task to model, and how its training data is built (see `capo.train.pairs`)."""

    annotator: str = field(default="A1", metadata={"help": "target annotator: A1, A2, A3 or A4; 'all': one adapter for "
                                                           "every annotator, the annotator's id in the prompt"})
    task: str = field(default="nli", metadata={"help": "nli or paraphrase"})
    dataset: str | None = field(
        default=None, metadata={"help": "varierr | lewidi-ven (nli), lewidi-par (paraphrase), or a path to your own "
                                        "JSONL (capo.data.formats.jsonl.load_items_jsonl); default per task"}
    )
    split_seed: int = field(default=0, metadata={"help": "VariErr item split seed (the corpus LM is built on 0)"})
    few_shot: int = field(default=0, metadata={"help": "k worked examples from the target's training history"})
    rejected_from: str = field(default="all", metadata={"help": f"one of {', '.join(REJECTED_FROM)}"})
    sft_valid: str = field(default=DEFAULT_VALIDITY, metadata={"help": "validity predicate, SFT rows ('any': all)"})
    chosen_valid: str = field(default=DEFAULT_VALIDITY, metadata={"help": "validity predicate, chosen responses"})
    rejected_valid: str = field(default=DEFAULT_VALIDITY, metadata={"help": "validity predicate, rejected responses"})
    max_pairs_per_item: int | None = field(default=None, metadata={"help": "cap on CAPO pairs per item"})
    pair_seed: int = field(
        default=0, metadata={"help": "seed for pair sampling and few-shot examples (separate generators)"}
    )
    eval_split: str | None = field(
        default="dev", metadata={"help": "held-out split for the eval hook (dev or test); none to skip"}
    )
    max_eval_rows: int | None = field(default=None, metadata={"help": "use at most this many held-out rows"})
    max_train_rows: int | None = field(default=None, metadata={"help": "use at most this many training rows"})
    train_half: int | None = field(default=None, metadata={
        "help": "train on one half (0 or 1) of the training items, halved with split_seed (the study: explainers on "
                "half 0, a judge disjoint from them on half 1; capo.data.variants)"})
    pseudo_annotators: int | None = field(default=None, metadata={
        "help": "the pseudo-annotator control: annotator ids permuted within each item with this seed before the "
                "rows and pairs are built, so the target is a random real annotator on each item"})

    def __post_init__(self) -> None:
        if self.eval_split in ("none", "None", ""):
            self.eval_split = None
        self.check()  # parsing happens inside `run_main`, so a bad value is one line, before any model loads

    def check(self) -> None:
        """Unknown annotator / task / mode -> one-line DataError listing the valid values."""
        check_annotator(self.annotator, conditioned=True)
        label_space(self.task)
        if self.rejected_from not in REJECTED_FROM:
            raise DataError(f"unknown rejected_from {self.rejected_from!r} (valid: {', '.join(REJECTED_FROM)})")
        for name in (self.sft_valid, self.chosen_valid, self.rejected_valid):
            predicate(name)
        if self.train_half not in (None, *HALVES):
            raise DataError(f"unknown half {self.train_half!r} (valid: 0, 1)", field="train_half")

    def task_data(self) -> TaskData:
        """The data set the rows and pairs come from, as the study variant options cut it."""
        data = load_task_data(self.task, self.dataset, self.split_seed)
        return study_variant(data, self.train_half, self.pseudo_annotators, self.split_seed)

    def format(self, template: str) -> str:
        """`runs/capo/{task}/{annotator}` -> `runs/capo/nli/A2`."""
        return template.format(annotator=self.annotator, task=self.task)


@dataclass
class ExplainerScriptArguments:
    """Script-level options (the TRL scripts' `ScriptArguments` counterpart)."""

    init_from: str = field(
        default="sft", metadata={"help": "CAPO start point: sft (the target's SFT adapter, also the reference) or base"}
    )
    sft_adapter: str = field(
        default="runs/sft/{task}/{annotator}", metadata={"help": "SFT adapter folder ({task}, {annotator} filled in)"}
    )
    ignore_bias_buffers: bool = field(default=False, metadata={"help": "DDP workaround for boolean buffers"})
    shared_prefix: bool = field(
        default=False,
        metadata={"help": "CAPO: pack prompt | chosen | rejected_1..k once per group (capo.train.packed); the "
                          "batch size then counts groups of 1-3 pairs"},
    )

    def __post_init__(self) -> None:
        if self.init_from not in INIT_FROM:
            raise DataError(f"unknown init_from {self.init_from!r} (valid: {', '.join(INIT_FROM)})")


def _limit(rows: list[dict], n: int | None) -> list[dict]:
    return rows if n is None else rows[:n]


def build_sft_datasets(args: CapoArguments):
    """(train, eval, data): `datasets.Dataset`s of conversational prompt/completion rows (eval = the target's held-out
    rows), both filtered by `sft_valid`, and the `TaskData` they come from."""
    from datasets import Dataset

    data = args.task_data()
    make = lambda split: for_annotators(sft_rows, data.items(split), args.annotator, few_shot=args.few_shot,
                                        few_shot_pool=data.items("train"), valid=args.sft_valid, seed=args.pair_seed)
    train = _limit(make("train"), args.max_train_rows)
    if not train:
        raise DataError(f"annotator {args.annotator} has no training rows in {data.dataset}")
    held = _limit(make(args.eval_split), args.max_eval_rows) if args.eval_split else []
    return Dataset.from_list(train), (Dataset.from_list(held) if held else None), data


def build_pair_datasets(args: CapoArguments):
    """(train, eval, data): preference `datasets.Dataset`s (eval pairs from held-out items only) and their `TaskData`."""
    from datasets import Dataset

    data = args.task_data()
    make = lambda split: for_annotators(
        capo_pairs, data.items(split), args.annotator, rejected_from=args.rejected_from, chosen_valid=args.chosen_valid,
        rejected_valid=args.rejected_valid, max_pairs_per_item=args.max_pairs_per_item, few_shot=args.few_shot,
        few_shot_pool=data.items("train"), seed=args.pair_seed,
    )
    train = _limit(make("train"), args.max_train_rows)
    if not train:
        raise DataError(f"annotator {args.annotator} has no CAPO pairs in {data.dataset} (check the validity options)")
    held = _limit(make(args.eval_split), args.max_eval_rows) if args.eval_split else []
    return Dataset.from_list(train), (Dataset.from_list(held) if held else None), data


def _training_data(data: TaskData, annotator: str, train, init_adapter: tuple[str, dict] | None = None) -> dict:
    """The manifest's record of what this adapter trained on: the rows' items and their few-shot examples."""
    shown = [i for ids in train["few_shot_ids"] for i in ids] if "few_shot_ids" in train.column_names else []
    return training_record(data, annotator, train["id"], shown, init_adapter)


def _model_init_kwargs(model_args, training_args) -> dict:
    from trl import get_quantization_config

    from capo.precision import resolve_dtype

    device = "cpu" if training_args.use_cpu else None
    dtype = resolve_dtype(model_args.dtype, device) if model_args.dtype else None  # auto: as the hardware decides
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code,
              "attn_implementation": model_args.attn_implementation, "dtype": dtype}
    kwargs.update(training_args.model_init_kwargs or {})
    quantization = get_quantization_config(model_args)
    if quantization is not None:  # QLoRA: the base model in 4 bits, the adapter in full precision
        from trl import get_kbit_device_map

        kwargs.update(quantization_config=quantization, device_map=get_kbit_device_map())
    return {k: v for k, v in kwargs.items() if v is not None}


def _lora_config(model_args):
    from trl import get_peft_config

    model_args.use_peft = True  # explainers are always LoRA adapters
    if not model_args.lora_target_modules:
        model_args.lora_target_modules = "all-linear"
    if model_args.lora_modules_to_save:
        raise DataError("lora_modules_to_save is not supported: vLLM cannot load adapters that save full modules")
    return get_peft_config(model_args)


def _prepare(capo_args: CapoArguments, training_args, model_args) -> None:
    capo_args.check()
    if not model_args.model_name_or_path:
        raise DataError("no model: pass --model_name_or_path (a hub id or a local folder)")
    check_training_options(capo_args, training_args, model_args)
    training_args.output_dir = capo_args.format(training_args.output_dir)


def check_training_options(capo_args: CapoArguments, training_args, model_args) -> None:
    """Values TRL and transformers take without a word (max_steps -5 trains by epochs, few_shot -1 shows none) or
    refuse only in a traceback once the model has loaded (a batch size of 0, LoRA target modules the model lacks):
    each a one-line DataError naming the field, before any data set is built or model loaded."""
    from capo.runner import check_positive

    check_positive(training_args, "per_device_train_batch_size", "per_device_eval_batch_size",
                   "gradient_accumulation_steps")
    if training_args.max_steps != -1 and training_args.max_steps < 1:  # -1, the default: train num_train_epochs
        raise DataError(f"must be a whole number of at least 1, or -1 to train for num_train_epochs, got "
                        f"{training_args.max_steps}", field="max_steps")
    if training_args.max_steps == -1 and not training_args.num_train_epochs > 0:
        raise DataError(f"must be more than 0 when max_steps is -1, got {training_args.num_train_epochs}",
                        field="num_train_epochs")
    if capo_args.few_shot < 0:
        raise DataError(f"must be a whole number of at least 0, got {capo_args.few_shot}", field="few_shot")
    if model_args.model_name_or_path:
        _check_lora_targets(model_args, training_args)


def _check_lora_targets(model_args, training_args) -> None:
    """LoRA target modules that match nothing in the model: peft says so only after the weights have loaded, in a
    traceback. The model's skeleton (its config on the meta device: no weights, no memory) with peft's own matching
    says it first."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    targets = model_args.lora_target_modules
    if targets in (None, "all-linear", ["all-linear"]) and not model_args.lora_target_parameters:
        return  # every linear layer: any causal LM has them
    from peft import inject_adapter_in_model
    from peft.utils.error import NoMatchingPeftModuleError

    lora = _lora_config(copy.copy(model_args))  # a copy: the recorded arguments stay as given
    model = model_args.model_name_or_path
    config = AutoConfig.from_pretrained(model, revision=model_args.model_revision,
                                        trust_remote_code=training_args.trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=training_args.trust_remote_code)
    try:
        inject_adapter_in_model(lora, skeleton, low_cpu_mem_usage=True)
    except NoMatchingPeftModuleError:
        # TRL passes a single name on as a string, which peft reads as a regular expression over full names
        how = ("a single name is a regular expression over full module names, e.g. '.*q_proj'" if isinstance(
            targets, str) else "each name must end a module name, e.g. q_proj")
        raise DataError(f"{targets!r} matches no module of {model} ({how}; all-linear: every linear layer)",
                        field="lora_target_modules") from None
    except ValueError as err:  # a module LoRA cannot adapt (e.g. a norm layer)
        raise DataError(" ".join(str(err).split()), field="lora_target_modules") from None


def quiet_checkpointing_rename() -> None:
    """TRL's training configs default `gradient_checkpointing` to true, the name transformers now deprecates for
    `activation_checkpointing`: every run, an error included, would start with the same two-line FutureWarning
    about a name the user never wrote. Only that warning is silenced."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`gradient_checkpointing` is deprecated", category=FutureWarning)


def _resume_point(training_args) -> str | None:
    """`resume_from_checkpoint`: a folder, or true/auto for the newest complete checkpoint in output_dir (a save
    that a kill cut short is skipped: `capo.io.last_complete_checkpoint`; none -> fresh)."""
    from capo.io import checkpoint_problem, last_complete_checkpoint

    value = training_args.resume_from_checkpoint
    if value in (None, "", "false", "False"):
        return None
    if str(value).lower() in ("true", "auto"):
        return last_complete_checkpoint(training_args.output_dir)
    if not Path(value).is_dir():
        raise DataError("checkpoint folder not found", path=str(value), field="resume_from_checkpoint")
    problem = checkpoint_problem(value)
    if problem:
        raise DataError(f"not a complete checkpoint: {problem}", path=str(value), field="resume_from_checkpoint")
    return str(value)


def _finish(trainer, training_args, config: dict, extra: dict) -> dict:
    """Adapter, tokenizer, metrics and manifest into output_dir (the manifest last: its presence marks a done run)."""
    from capo.data.formats.common import DATA_DIR

    history = trainer.state.log_history
    metrics = dict(history[-1]) if history else {}
    if trainer.eval_dataset is not None:
        # An evaluation logged at the final step already holds the held-out metrics: no second pass over eval rows.
        final = [r for r in history if "eval_loss" in r and r.get("step") == trainer.state.global_step]
        metrics.update(final[-1] if final else trainer.evaluate())
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # DPOTrainer's frozen copy of the SFT adapter is not part of the result
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        trainer.save_metrics("all", metrics)
        data_files = sorted(p for p in DATA_DIR.rglob("*.json") if p.name.startswith(("varierr", "VariErrNLI",
                                                                                       "Paraphrase")))
        # Each kept checkpoint is an adapter of this run at an earlier step (the study's learning curve): it gets
        # the run's manifest with its step, so generation and scoring check it as they check the run. The record
        # names every item of the run, a superset of what the checkpoint saw: held-out checks stay conservative.
        for checkpoint in sorted(out.glob("checkpoint-*")):
            if (checkpoint / "adapter_config.json").is_file():
                step = int(checkpoint.name.rsplit("-", 1)[1])
                write_manifest(checkpoint, config=config, data_files=data_files, seed=training_args.seed,
                               extra={"checkpoint_of": str(out), "checkpoint_step": step,
                                      "world_size": training_args.world_size, **extra})
        write_manifest(out, config=config, data_files=data_files, seed=training_args.seed,
                       extra={"metrics": metrics, "world_size": training_args.world_size, **extra})
    return metrics


def train_sft(script_args: ExplainerScriptArguments, capo_args: CapoArguments, training_args, model_args) -> dict:
    """SFT of a LoRA adapter on the target annotator's training responses (loss on the completion only)."""
    from trl import SFTTrainer

    _prepare(capo_args, training_args, model_args)
    train, held, data = build_sft_datasets(capo_args)
    training_args.completion_only_loss = True
    training_args.model_init_kwargs = _model_init_kwargs(model_args, training_args)
    if held is None:
        training_args.eval_strategy = "no"
    trainer = SFTTrainer(model=model_args.model_name_or_path, args=training_args, train_dataset=train,
                         eval_dataset=held, peft_config=_lora_config(model_args))
    trainer.train(resume_from_checkpoint=_resume_point(training_args))
    config = {"script": script_args, "capo": capo_args, "training": training_args, "model": model_args}
    return _finish(trainer, training_args, config, {"stage": "sft", "annotator": capo_args.annotator,
                                                    "task": capo_args.task, "train_rows": len(train),
                                                    "eval_rows": len(held) if held is not None else 0,
                                                    RECORD: _training_data(data, capo_args.annotator, train)})


def load_sft_policy(adapter_dir: str | Path, capo_args: CapoArguments, model_args, training_args):
    """(policy, SFT run manifest): the base model with the target's SFT adapter, trainable (DPOTrainer copies it as
    the frozen reference). The manifest must record the SFT's training items: CAPO inherits them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise DataError(f"no SFT adapter for {capo_args.annotator} ({capo_args.task}): train it first with "
                        "recipes/sft.py, or pass --init_from base", path=str(adapter_dir))
    manifest_path = adapter_dir / "run_manifest.json"
    if not manifest_path.exists():
        raise DataError("the SFT adapter has no run manifest, so its training items are unknown (train it with "
                        "recipes/sft.py, or pass --init_from base)", path=str(adapter_dir))
    manifest = read_json(manifest_path)
    if (manifest.get("annotator"), manifest.get("task")) != (capo_args.annotator, capo_args.task):
        raise DataError(f"the SFT adapter is for {manifest.get('annotator')} ({manifest.get('task')}), not "
                        f"{capo_args.annotator} ({capo_args.task})", path=str(adapter_dir))
    base = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path,
                                                **_model_init_kwargs(model_args, training_args))
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True), manifest


def train_capo(script_args: ExplainerScriptArguments, capo_args: CapoArguments, training_args, model_args) -> dict:
    """DPO on cross-annotator pairs; starts from (and is regularised towards) the target's SFT adapter by default."""
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    _prepare(capo_args, training_args, model_args)
    train, held, data = build_pair_datasets(capo_args)
    if held is None:
        training_args.eval_strategy = "no"
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    extra = {"stage": "capo", "annotator": capo_args.annotator, "task": capo_args.task, "train_pairs": len(train),
             "eval_pairs": len(held) if held is not None else 0, "init_from": script_args.init_from}
    if script_args.init_from == "sft":
        adapter = capo_args.format(script_args.sft_adapter)
        model, sft_manifest = load_sft_policy(adapter, capo_args, model_args, training_args)
        extra["sft_adapter"] = adapter
        extra[RECORD] = _training_data(data, capo_args.annotator, train, (adapter, sft_manifest))
        peft_config = None
    else:
        training_args.model_init_kwargs = _model_init_kwargs(model_args, training_args)
        model, peft_config = model_args.model_name_or_path, _lora_config(model_args)
        extra[RECORD] = _training_data(data, capo_args.annotator, train)
    if script_args.shared_prefix:
        from capo.train.packed_trainer import SharedPrefixDPOTrainer

        trainer_class = SharedPrefixDPOTrainer
    else:
        trainer_class = DPOTrainer
    extra["shared_prefix"] = script_args.shared_prefix
    trainer = trainer_class(model=model, args=training_args, train_dataset=train, eval_dataset=held,
                         processing_class=tokenizer, peft_config=peft_config)
    if script_args.ignore_bias_buffers:  # torch distributed hack, as in TRL's dpo script
        import torch

        trainer.model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool
        ]
    trainer.train(resume_from_checkpoint=_resume_point(training_args))
    config = {"script": script_args, "capo": capo_args, "training": training_args, "model": model_args}
    return _finish(trainer, training_args, config, extra)
