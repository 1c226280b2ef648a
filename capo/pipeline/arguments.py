"""What a pipeline run is given (`recipes/pipeline.py`: a `TrlParser` dataclass, a YAML config, every key overridable
on the command line), and the checks that stop a bad value before any stage starts."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from capo.data.schema import ANNOTATORS, check_annotator, label_space
from capo.errors import DataError

LAUNCHERS = ("python", "accelerate")
GENERATE_KINDS = ("sft", "capo")
JUDGES = ("trained", "llm")
LEWIDI_DATASETS = ("ven", "par")
NLI_DATASETS = ("varierr", "lewidi-ven")
# Keys the pipeline sets itself in every explainer / MJD / encoder run: an override of one would break the layout
# that later stages read.
OWNED_KEYS = {"model_name_or_path", "output_dir", "task", "annotator", "seed", "split_seed", "sft_adapter",
              "init_from", "resume_from_checkpoint", "save_raw_scores", "dataset", "use_cpu", "source"}


@dataclass
class PipelineArguments:
    """One study: data, explainers, generation, evaluation, MJDs, LeWiDi, report (see `capo.pipeline.stages`)."""

    output_dir: str = field(default="runs/pipeline", metadata={"help": "one folder per stage, report/ last"})
    from_stage: str | None = field(default=None, metadata={"help": "re-run this stage and every later one (--from)"})
    status: bool = field(default=False, metadata={"help": "print each stage's state and the wall time spent so far "
                                                          "(every attempt), then exit: runs nothing"})
    dry_run: bool = field(default=False, metadata={"help": "print every enabled stage's jobs with their resolved "
                                                             "options and the memory plan per stage, then exit: "
                                                             "runs nothing, loads no model, writes nothing"})
    model_config: str | None = field(default=None, metadata={
        "help": "dry run: a transformers config.json for the memory plan where the model's own is not at hand "
                "(default: recipes/model_configs/ for the hub ids they name, else the model's)"})
    gpu_memory_gib: float = field(default=80.0, metadata={"help": "dry run: the GPU memory the plans are checked "
                                                                  "against where none is visible (80: an H100)"})
    skip: list[str] = field(default_factory=list, metadata={"help": "stages to leave out (and the stages that need "
                                                                     "them); the report says which"})
    model: str = field(default="models/smollm2-135m-instruct", metadata={"help": "base LM: hub id or folder"})
    dtype: str = field(default="auto", metadata={"help": "generation and LLM-judge dtype; auto: bf16 where the "
                                                           "device computes it natively, else fp32 (MJD runs: their "
                                                           "config's)"})
    tasks: list[str] = field(default_factory=lambda: ["nli"])
    annotators: list[str] = field(default_factory=lambda: list(ANNOTATORS))
    seeds: list[int] = field(default_factory=lambda: [0])
    split_seed: int = field(default=0, metadata={"help": "VariErr item split (the corpus LM is built on 0)"})
    nli_dataset: str = field(default="varierr", metadata={
        "help": "what the nli explainers train and are evaluated on: varierr (split by split_seed) or lewidi-ven "
                "(LeWiDi VEN's own train/dev/test files: the explainers can then predict VEN in lewidi_explainers)"})
    launcher: str = field(default="python", metadata={"help": "python: trainers, generation and MJDs in this "
                                                               "process; accelerate: each one under accelerate launch"})
    launcher_args: list[str] = field(default_factory=list, metadata={
        "help": "accelerate launch options as KEY=VALUE or FLAG (e.g. num_processes=8 multi_gpu)"})
    # Explainers: the recipes' own configs, with KEY=VALUE overrides of their keys.
    sft_config: str = "recipes/configs/sft_tiny.yaml"
    sft_args: list[str] = field(default_factory=list, metadata={"help": "recipes/sft.py options as KEY=VALUE"})
    capo_config: str = "recipes/configs/capo_tiny.yaml"
    capo_args: list[str] = field(default_factory=list, metadata={"help": "recipes/capo.py options as KEY=VALUE"})
    conditioned: bool = field(default=False, metadata={"help": "also one adapter for all annotators (annotator all)"})
    # Generation for held-out items (VariErr test; Paraphrase dev, its test split is not shipped).
    generate_kinds: list[str] = field(default_factory=lambda: ["capo"])
    generate_base: bool = True
    prompting_shots: list[int] = field(default_factory=list, metadata={
        "help": "prompting baselines on the base model: 0 = zero-shot, K = K examples of the target's history"})
    prompting_response_prefix: str = field(default="Label:", metadata={
        "help": "prompting baselines: the start of the answer, written for the model to continue (small instruction "
                "models ignore the requested format otherwise); empty: none"})
    prompting_stop: list[str] = field(default_factory=lambda: ["\n\n"], metadata={
        "help": "prompting baselines: decoding ends before these strings (a blank line: where a few-shot prompt's "
                "next example would begin)"})
    generate_limit: int | None = None
    generate_max_new_tokens: int = 96
    generate_batch_size: int = field(default=16, metadata={"help": "generation batch size; also the jury's and "
                                                                    "the LeWiDi explainers' scoring batch size"})
    generate_shard_size: int = 16
    # Evaluation.
    attribution_splits: list[str] = field(default_factory=lambda: ["dev", "test"])
    attribution_limit: int | None = field(default=None, metadata={"help": "attribution: score at most the first N "
                                                                           "held-out items of each split"})
    exclude_pretrained: bool = field(default=True, metadata={"help": "attribution: leave out the corpus LM's "
                                                                      "pre-training items"})
    judges: list[str] = field(default_factory=lambda: ["trained"])
    judge_features: str = "char"
    judge_limit: int | None = field(default=None, metadata={"help": "LLM judge: judge at most the first N responses "
                                                                    "of each set (the trained judge judges all)"})
    imitation_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    embeddings: bool = field(default=True, metadata={"help": "MiniLM measures in imitation and variability"})
    model_explanations: list[str] = field(default_factory=list, metadata={
        "help": "released LLM explanation files as NAME=PATH, compared with the humans' on the 341 items"})
    # MJDs: NAME=CONFIG (recipes/mjd.py configs), calibrated by cross-fitting.
    mjd_runs: list[str] = field(default_factory=lambda: ["none=recipes/configs/mjd_tiny_none.yaml"])
    mjd_args: list[str] = field(default_factory=list, metadata={"help": "recipes/mjd.py options as KEY=VALUE"})
    calibrate: bool = True
    # Soft-label encoder fine-tuning (recipes/finetune.py) on the lowest-KL MJD, beside ChaosNLI's HJDs.
    finetune: bool = field(default=False, metadata={"help": "fine-tune MiniLM on the best MJD and on ChaosNLI "
                                                            "(per seed; needs MJDs for all 341 items)"})
    finetune_config: str = "recipes/configs/finetune_cpu.yaml"
    finetune_args: list[str] = field(default_factory=list, metadata={"help": "recipes/finetune.py options as "
                                                                             "KEY=VALUE"})
    # LeWiDi 2025.
    lewidi_datasets: list[str] = field(default_factory=lambda: list(LEWIDI_DATASETS))
    perspectivist: bool = field(default=False, metadata={"help": "train the perspectivist encoder (per seed)"})
    perspectivist_config: str = "recipes/configs/perspectivist_cpu.yaml"
    perspectivist_args: list[str] = field(default_factory=list, metadata={"help": "recipes/perspectivist.py "
                                                                                  "options as KEY=VALUE"})
    # The explainers' label probabilities (capo.generate.labels): the jury on the 341 items vs
    # ChaosNLI, and LeWiDi per-annotator predictions (base model, SFT and CAPO explainers per seed).
    jury: bool = field(default=False, metadata={"help": "the explainer jury (eval/jury.py) on the 341 ChaosNLI "
                                                        "items, beside the MJDs (needs task nli)"})
    lewidi_explainers: bool = field(default=False, metadata={
        "help": "the base model and the explainers as LeWiDi annotators (eval/lewidi.py predict --model); "
                "explainers only where they trained on that LeWiDi data set's own train split (Par: always; VEN: "
                "nli_dataset lewidi-ven), else the report says why"})

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every value checked while parsing: a bad one is one line naming the field, before anything is written."""
        for name in ("tasks", "annotators", "seeds"):
            values = getattr(self, name)
            if not values:
                raise DataError("needs at least one value", field=name)
            if len(set(values)) != len(values):
                raise DataError(f"a value given twice: {values}", field=name)
        for task in self.tasks:
            try:
                label_space(task)
            except DataError as err:
                raise err.at(field="tasks") from None
        for annotator in self.annotators:
            try:
                check_annotator(annotator)
            except DataError as err:
                raise err.at(field="annotators") from None
        if len(self.annotators) < 2:
            raise DataError("needs at least two annotators (attribution compares each with another one's model)",
                            field="annotators")
        _choice(self.launcher, LAUNCHERS, "launcher")
        _choice(self.nli_dataset, NLI_DATASETS, "nli_dataset")
        from capo.generate.backends.base import DTYPES

        _choice(self.dtype, DTYPES, "dtype")
        for kind in self.generate_kinds:
            _choice(kind, GENERATE_KINDS, "generate_kinds")
        for judge in self.judges:
            _choice(judge, JUDGES, "judges")
        from capo.evaluate.behaviour.patterns import FEATURES

        _choice(self.judge_features, FEATURES, "judge_features")
        for dataset in self.lewidi_datasets:
            _choice(dataset, LEWIDI_DATASETS, "lewidi_datasets")
        for split in self.attribution_splits:
            _choice(split, ("dev", "test"), "attribution_splits")
        for name in ("generate_limit", "judge_limit", "attribution_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"must be at least 1, got {value}", field=name)
        for name in ("generate_max_new_tokens", "generate_batch_size", "generate_shard_size"):
            if getattr(self, name) < 1:
                raise DataError(f"must be at least 1, got {getattr(self, name)}", field=name)
        if any(k < 0 for k in self.prompting_shots) or len(set(self.prompting_shots)) != len(self.prompting_shots):
            raise DataError(f"expected distinct numbers of examples >= 0, got {self.prompting_shots}",
                            field="prompting_shots")
        if not self.imitation_ks or any(k < 1 for k in self.imitation_ks):
            raise DataError(f"group sizes must be at least 1, got {self.imitation_ks}", field="imitation_ks")
        for name in ("sft_config", "capo_config", *(("perspectivist_config",) if self.perspectivist else ()),
                     *(("finetune_config",) if self.finetune else ())):
            check_file(getattr(self, name), name)
        for name in ("sft_args", "capo_args", "mjd_args", "perspectivist_args", "finetune_args"):
            overrides(getattr(self, name), name)
        launcher_argv(self.launcher_args)
        if self.model_config is not None:
            check_file(self.model_config, "model_config")
        if not self.gpu_memory_gib > 0:
            raise DataError(f"must be more than 0, got {self.gpu_memory_gib}", field="gpu_memory_gib")
        for key in ("mjd_runs", "model_explanations"):
            for path in named_paths(getattr(self, key), key).values():
                check_file(path, key)
        if self.jury and "nli" not in self.tasks:
            raise DataError("the jury scores the 341 NLI items with the nli explainers: add nli to tasks or set it "
                            "false", field="jury")
        if self.lewidi_explainers and not self.lewidi_datasets:
            raise DataError("no LeWiDi data set to predict (lewidi_datasets is empty): name one or set it false",
                            field="lewidi_explainers")


def _choice(value, valid, name: str) -> None:
    if value not in valid:
        raise DataError(f"unknown value {value!r} (valid: {', '.join(map(str, valid))})", field=name)


def check_file(path: str, name: str) -> None:
    if not Path(path).is_file():
        raise DataError("file not found", path=str(path), field=name)


def overrides(specs: list[str], name: str) -> list[str]:
    """`["max_steps=6", "loss_type=sigmoid sft"]` -> `["--max_steps", "6", "--loss_type", "sigmoid", "sft"]`."""
    argv = []
    for spec in specs:
        key, sep, value = str(spec).partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key or not value.strip():
            raise DataError(f"expected KEY=VALUE, got {spec!r}", field=name)
        if key in OWNED_KEYS:
            raise DataError(f"{key} is set by the pipeline (one layout for every stage); leave it out", field=name)
        argv += [f"--{key}", *shlex.split(value)]
    return argv


def launcher_argv(specs: list[str]) -> list[str]:
    """accelerate launch options: `num_processes=8` -> `--num_processes 8`, `multi_gpu` -> `--multi_gpu`."""
    argv = []
    for spec in specs:
        key, sep, value = str(spec).partition("=")
        key = key.strip().removeprefix("--")
        if not key or (sep and not value.strip()):
            raise DataError(f"expected KEY=VALUE or FLAG, got {spec!r}", field="launcher_args")
        argv += [f"--{key}", *([value.strip()] if sep else [])]
    return argv


def named_paths(specs: list[str], name: str) -> dict[str, str]:
    """`["none=recipes/configs/mjd_tiny_none.yaml"]` -> {"none": "recipes/configs/mjd_tiny_none.yaml"} (a name is a
    folder name in the run: no "/")."""
    from capo.cli import named_values

    return named_values(specs, name, reserved="/")


def parse(argv: list[str] | None = None) -> PipelineArguments:
    """Command line over `--config` YAML over the defaults; `--from STAGE` is `--from_stage STAGE`."""
    import sys

    from capo.cli import parse_arguments

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = ["--from_stage" if a == "--from" else "--from_stage=" + a[7:] if a.startswith("--from=") else a
            for a in argv]
    (args,) = parse_arguments((PipelineArguments,), argv)
    return args
