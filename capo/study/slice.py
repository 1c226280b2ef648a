"""One slice of the generation study: one task and seed (part `core`, or its three parts `sft`, `capo` and `pseudo`
in three commands), the pair ablations of one seed (`controls`, or one variant a command: `capo_same_label`, ...), or
the prompting baselines (`prompting`), run on one machine, with its compact results written where they are committed
(`docs/study/slices/<task>_<part>_s<seed>/`), so slices from different sessions and machines combine into one report
(`eval/study_report.py`, `capo.study.report`). The smaller parts hold exactly the larger ones' jobs, split so that
each fits 150 minutes on a 2-core AVX2 CPU (docs/benchmarks.md): `sft` the SFT run with the SFT explainer and the
compute-matched SFT, `capo` CAPO and the learning curve's earlier checkpoints (it starts from `sft`'s adapters, so it
runs after `sft` with the same `--work_dir`, as do the control variants), `pseudo` the pseudo-annotator control.

What a `core` slice trains, all on half 0 of the training items (`--train_half 0`; the disjoint judge trains on
half 1), each adapter with the recipes' own entry points (`recipes/sft.py`, `recipes/capo.py`):
- SFT per annotator for `sft_steps + capo_steps` optimizer steps at a constant learning rate after warm-up, saved
  every `save_steps`: its checkpoint at `sft_steps` is the SFT explainer (CAPO starts from it), the final adapter is
  the compute-matched SFT (as many steps and rows as SFT + CAPO), and every checkpoint is a point of the learning
  curve;
- CAPO per annotator: `capo_steps` steps from the SFT checkpoint;
- the pseudo-annotator control: SFT then CAPO on the same schedule with annotator ids permuted within each item
  (`--pseudo_annotators`), so "A1" is a random real annotator on each item.
`controls` adds CAPO variants from the same SFT checkpoints (rejected from the same label only, from different labels
only, and a larger SFT weight); `prompting`, the base model with 4 and 16 of the target's examples on every held-out
item and 50 on the first `fifty_shot_limit`.

Each explainer then writes a response per held-out item and target (`recipes/generate.py`, greedy) and its label
probabilities are scored exactly (`capo.generate.labels.LabelScorer`, the LeWiDi path's engine). Four trained judges
(char n-grams + logistic regression, `capo.evaluate.behaviour.judges.TrainedJudge`) score every response and the
real held-out responses (the ceiling): raw text + label, input-reduced text + label (primary), explanation only,
and the reduced judge trained on half 1 (items no explainer trained on).

Every job resumes (a finished adapter or generation run is kept; a killed one resumes from its checkpoints or
shards), and the slice's results are written last, all at once.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capo.errors import DataError
from capo.io import read_json, write_json
from capo.study.judging import JUDGES, judge_rows

CORE_PARTS = {  # part -> the kinds of adapter it trains and of source it generates; `core` runs all three at once
    "sft": ("sft", "sft_matched"), "capo": ("capo", "sft_curve"), "pseudo": ("pseudo_sft", "pseudo_capo")}
ANNOTATORS = ("A1", "A2", "A3", "A4")
CONTROL_VARIANTS = {  # CAPO ablations of the `controls` part: source -> (recipes/capo.py options, description)
    "capo_same_label": (["--rejected_from", "same_label"], "CAPO, rejected responses with the chosen label only"),
    "capo_different_label": (["--rejected_from", "different_label"], ("CAPO, rejected responses with another label "
                                                                     "only")),
    "capo_sft_weight": (["--loss_weights", "1.0", "1.0"], ("CAPO with SFT weight 1.0 (0.2 in the study): "
                                                          "label-preserving")),
}
PARTS = ("core", *CORE_PARTS, "controls", *CONTROL_VARIANTS, "prompting")  # `controls`: its three variants at once


@dataclass
class SliceArguments:
    """One study slice (see the module docstring)."""

    task: str = field(default="nli", metadata={"help": "nli (VariErr, split by split_seed) or paraphrase (LeWiDi Par)"})
    seed: int = field(default=0, metadata={"help": "training seed of every adapter (the prompting part ignores it)"})
    part: str = field(default="core", metadata={"help": f"one of {', '.join(PARTS)}"})
    model: str = "models/smollm2-135m-instruct"
    dtype: str = field(default="auto", metadata={"help": "generation and scoring dtype (training: the configs' "
                                                           "bf16: auto)"})
    split_seed: int = 0
    work_dir: str = field(default="runs/study_slices", metadata={"help": "adapters and generations (not committed)"})
    output_dir: str = field(default="docs/study/slices", metadata={"help": "compact results, one folder a slice"})
    sft_config: str = "recipes/configs/sft_tiny.yaml"
    capo_config: str = "recipes/configs/capo_tiny.yaml"
    sft_steps: int = field(default=10, metadata={"help": "the SFT explainer's steps (CAPO starts there)"})
    capo_steps: int = 4
    save_steps: int = field(default=5, metadata={"help": "SFT checkpoint interval: the learning curve's points"})
    batch_size: int = field(default=8, metadata={"help": "rows (SFT) or item groups (CAPO) per optimizer step"})
    pseudo_seed: int = field(default=1000, metadata={"help": "annotator permutation of the pseudo-annotator control"})
    limit: int | None = field(default=None, metadata={"help": "the first N held-out items (default: all)"})
    fifty_shot_limit: int | None = field(default=12, metadata={
        "help": "prompting part: items of the 50-shot run (12 on CPU; none: all, as the GPU config has it)"})
    max_new_tokens: int = 96
    generate_batch_size: int = 16
    generate_shard_size: int = field(default=64, metadata={
        "help": "records a shard: a shard's records are split by adapter, so 64 = 16 items x 4 targets gives each "
                "adapter batches of 16 (16 a shard: batches of 4, about 3x slower on CPU)"})

    def __post_init__(self) -> None:
        from capo.data.schema import label_space

        label_space(self.task)
        if self.part not in PARTS:
            raise DataError(f"unknown part {self.part!r} (valid: {', '.join(PARTS)})", field="part")
        for name in ("sft_steps", "capo_steps", "save_steps", "batch_size", "max_new_tokens", "generate_batch_size",
                     "generate_shard_size"):
            if getattr(self, name) < 1:
                raise DataError(f"must be at least 1, got {getattr(self, name)}", field=name)
        if self.sft_steps % self.save_steps:
            raise DataError(f"sft_steps ({self.sft_steps}) must be a multiple of save_steps ({self.save_steps}): CAPO "
                            "starts from the SFT checkpoint at sft_steps", field="save_steps")
        for name in ("limit", "fifty_shot_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DataError(f"must be at least 1, got {getattr(self, name)}", field=name)
        for name in ("sft_config", "capo_config"):
            if not Path(getattr(self, name)).is_file():
                raise DataError("file not found", path=getattr(self, name), field=name)

    @property
    def name(self) -> str:
        return f"{self.task}_{self.part}" + ("" if self.part == "prompting" else f"_s{self.seed}")

    @property
    def dataset(self) -> str:
        from capo.data.datasets import DEFAULT_DATASET

        return DEFAULT_DATASET[self.task]


@dataclass(frozen=True)
class Source:
    """One explainer or prompting baseline of the slice: its generation options and, for adapters, the folders."""

    name: str
    kind: str
    step: int | None
    description: str
    adapters: dict[str, str] = field(default_factory=dict)  # annotator -> folder (empty: the base model)
    options: tuple[str, ...] = ()  # extra recipes/generate.py options (prompting)
    limit: int | None = None


class Slice:
    """The jobs of one slice, run in order through the entry points (`capo.pipeline.launch`)."""

    def __init__(self, args: SliceArguments, log: Callable[[str], None] = print) -> None:
        from capo.data.datasets import load_task_data
        from capo.pipeline.layout import heldout_split

        self.args, self.log = args, log
        self.work = Path(args.work_dir) / args.task
        self.data = load_task_data(args.task, args.dataset, args.split_seed)
        self.heldout = heldout_split(args.task, args.split_seed, args.dataset)
        items = self.data.items(self.heldout)
        self.items = items[: args.limit] if args.limit else items
        self.commands: list[str] = []
        self.wall: dict[str, float] = {}
        self.earlier: list[str] = []  # wall entries measured by an earlier invocation of the slice

    # -- training ---------------------------------------------------------------------------------------------
    def adapter_dir(self, kind: str, annotator: str, seed: int | None = None) -> Path:
        return self.work / f"seed{self.args.seed if seed is None else seed}" / kind / annotator

    def _train_argv(self, config: str, annotator: str, folder: Path, steps: int, save_steps: int) -> list[str]:
        from capo.pipeline.stages.common import use_cpu

        a = self.args
        return ["--config", config, "--model_name_or_path", a.model, "--task", a.task, "--dataset", a.dataset,
                "--annotator", annotator, "--seed", str(a.seed), "--split_seed", str(a.split_seed),
                "--train_half", "0", "--max_steps", str(steps), "--save_steps", str(save_steps),
                "--save_total_limit", "1000", "--per_device_train_batch_size", str(a.batch_size),
                "--eval_strategy", "no", "--eval_split", "none", "--use_cpu", use_cpu(),
                "--resume_from_checkpoint", "true", "--output_dir", str(folder)]

    def _run(self, job, argv: list[str], label: str, done: Path | None = None) -> None:
        from capo.pipeline.launch import command_line, launch

        if done is not None and done.is_file():
            self.commands.append(command_line(_Launcher, job, argv))
            # kept from an earlier invocation: its training time (the trainer's, without model loading)
            results = done.parent / "all_results.json"
            if results.is_file() and "train_runtime" in (runtime := read_json(results)):
                self.wall[label] = round(float(runtime["train_runtime"]), 1)
                self.earlier.append(label)
            return
        self.log(f"slice {self.args.name}: {label}")
        start = time.perf_counter()
        self.commands.append(launch(_Launcher, job, argv))
        self.wall[label] = round(time.perf_counter() - start, 1)

    def train_sft(self, kind: str, steps: int, extra: list[str]) -> None:
        from capo.pipeline.launch import SFT

        for annotator in ANNOTATORS:
            folder = self.adapter_dir(kind, annotator)
            argv = self._train_argv(self.args.sft_config, annotator, folder, steps, self.args.save_steps) + extra
            self._run(SFT, argv, f"{kind} {annotator}", folder / "run_manifest.json")

    def train_capo(self, kind: str, start: Callable[[str], Path], extra: list[str]) -> None:
        from capo.pipeline.launch import CAPO

        a = self.args
        for annotator in ANNOTATORS:
            folder = self.adapter_dir(kind, annotator)
            argv = (self._train_argv(a.capo_config, annotator, folder, a.capo_steps, a.capo_steps)
                    + ["--init_from", "sft", "--sft_adapter", str(start(annotator))] + extra)
            self._run(CAPO, argv, f"{kind} {annotator}", folder / "run_manifest.json")

    def sft_checkpoint(self, kind: str, annotator: str, step: int) -> Path:
        return self.adapter_dir(kind, annotator) / f"checkpoint-{step}"

    def train(self) -> list[Source]:
        """Train this part's adapters; return every source it generates from."""
        a = self.args
        total = a.sft_steps + a.capo_steps
        per = lambda kind, fn: {x: str(fn(kind, x)) for x in ANNOTATORS}
        if a.part == "prompting":
            shots = {4: None, 16: None, 50: a.fifty_shot_limit}
            return [Source(f"fs{k}", f"fs{k}", None, f"base model, {k} of the target's training examples in the "
                           "prompt", options=("--targets", *ANNOTATORS, "--few_shot", str(k), "--response_prefix",
                                              "Label:", "--stop", "\n\n"), limit=limit)
                    for k, limit in shots.items()]
        constant = ["--lr_scheduler_type", "constant_with_warmup"]
        sft_start = lambda x: self.sft_checkpoint("sft", x, a.sft_steps)  # CAPO's start: SFT at sft_steps
        if a.part in ("controls", "capo", *CONTROL_VARIANTS):
            missing = [str(sft_start(x)) for x in ANNOTATORS if not (sft_start(x) / "run_manifest.json").is_file()]
            if missing:
                raise DataError(f"the {a.part} part starts from the SFT checkpoints: run --part core (or sft) "
                                f"--seed {a.seed} first, with the same --work_dir", path=missing[0])
        if a.part == "controls" or a.part in CONTROL_VARIANTS:
            sources = []
            for kind, (options, description) in CONTROL_VARIANTS.items():
                if a.part not in ("controls", kind):
                    continue
                self.train_capo(kind, sft_start, options)
                sources.append(Source(kind, kind, total, description, per(kind, self.adapter_dir)))
            return sources
        mine = lambda kind: a.part == "core" or kind in CORE_PARTS[a.part]
        pseudo = ["--pseudo_annotators", str(a.pseudo_seed)]
        if mine("sft"):
            self.train_sft("sft", total, constant)
        if mine("capo"):
            self.train_capo("capo", sft_start, [])
        if mine("pseudo_sft"):
            self.train_sft("pseudo_sft", a.sft_steps, constant + pseudo)
        if mine("pseudo_capo"):
            self.train_capo("pseudo_capo", lambda x: self.adapter_dir("pseudo_sft", x), pseudo)
        curve = [Source(f"sft_step{s}", "sft" if s == a.sft_steps else "sft_curve", s,
                        f"SFT after {s} steps (checkpoint of the {total}-step run)",
                        per("sft", lambda k, x, s=s: self.sft_checkpoint(k, x, s)))
                 for s in range(a.save_steps, total, a.save_steps)]
        sources = [*curve,
                   Source("sft_matched", "sft_matched", total,
                          f"SFT for {total} steps: compute-matched to SFT + CAPO", per("sft", self.adapter_dir)),
                   Source("capo", "capo", total, f"CAPO: {a.capo_steps} steps from SFT at step {a.sft_steps}",
                          per("capo", self.adapter_dir)),
                   Source("pseudo_capo", "pseudo_capo", total, "control: CAPO of pseudo-annotators (annotator ids "
                          "permuted within each item), expected at chance", per("pseudo_capo", self.adapter_dir))]
        return [s for s in sources if mine(s.kind)]

    # -- generation and label probabilities -------------------------------------------------------------------
    def generate(self, source: Source) -> Path:
        from capo.pipeline.launch import GENERATE

        a = self.args
        folder = self.work / f"seed{a.seed}" / "generation" / source.name
        limit = source.limit or a.limit
        argv = ["--model", a.model, "--dataset", a.dataset, "--split", self.heldout, "--split_seed",
                str(a.split_seed), "--dtype", a.dtype, "--batch_size", str(a.generate_batch_size), "--max_new_tokens",
                str(a.max_new_tokens), "--shard_size", str(a.generate_shard_size), *(["--limit", str(limit)] if limit else []),
                *(["--adapters", *(f"{x}={p}" for x, p in source.adapters.items())] if source.adapters else []),
                *source.options, "--output_dir", str(folder)]
        label = f"generate {source.name}"
        self._run(GENERATE, argv, label)  # always launched: a finished run only checks its settings and merges
        # The run's own time, kept beside it: a resumed slice whose run had nothing left to generate reports that
        generated = read_json(folder / "run_manifest.json")["summary"]["this_process"]["records"]
        timing = folder / "slice_seconds.json"  # (a run resumed after a kill records the resumed part's time)
        if generated == 0 and timing.is_file():
            self.wall[label] = read_json(timing)["seconds"]
            self.earlier.append(label)
        elif not timing.is_file():
            write_json(timing, {"seconds": self.wall[label]})
        return folder / "generations.jsonl"

    def label_probabilities(self, source: Source) -> list[dict]:
        """Every (target, held-out item)'s label distribution under the source's explainer (adapters only)."""
        from capo.generate.labels import Explainers, LabelScorer, check_not_trained_on
        from capo.precision import resolve_dtype

        explainers = Explainers("explainer", dict(source.adapters))
        check_not_trained_on(self.items, explainers, f"source {source.name}", log=self.log)
        # kept for a resumed slice: the scores of these adapters on these items, in this precision
        cache = self.work / f"seed{self.args.seed}" / "labels" / f"{source.name}.json"
        key = {"adapters": source.adapters, "items": [item.id for item in self.items],
               "dtype": resolve_dtype(self.args.dtype), "model": self.args.model}
        if cache.is_file() and (stored := read_json(cache)).get("key") == key:
            self.wall[f"labels {source.name}"] = stored["seconds"]
            self.earlier.append(f"labels {source.name}")
            return stored["rows"]
        self.log(f"slice {self.args.name}: label probabilities {source.name}")
        start = time.perf_counter()
        scorer = LabelScorer(self.args.model, explainers, dtype=resolve_dtype(self.args.dtype),
                             batch_size=self.args.generate_batch_size)
        jobs = [(item, x) for x in ANNOTATORS for item in self.items]
        probs = scorer.probabilities(jobs)
        seconds = round(time.perf_counter() - start, 1)
        self.wall[f"labels {source.name}"] = seconds
        rows = [{"source": source.name, "target": x, "item_id": item.id, "probs": [round(float(p), 6) for p in row]}
                for (item, x), row in zip(jobs, probs, strict=True)]
        write_json(cache, {"key": key, "seconds": seconds, "rows": rows})
        return rows


class _Launcher:
    """The launch settings of a slice: every job in this process (`capo.pipeline.launch.launch`)."""

    launcher = "python"
    launcher_args = ()


def run_slice(args: SliceArguments, log: Callable[[str], None] = print) -> dict:
    """Train, generate, score and judge one slice; write its compact results last (see the module docstring)."""
    from capo.precision import precision_report

    work = Slice(args, log)
    start = time.perf_counter()
    sources = work.train()
    generated = {source.name: work.generate(source) for source in sources}
    labels = [row for source in sources if source.adapters for row in work.label_probabilities(source)]
    responses = judge_rows(work.data, work.items, generated, args.split_seed)
    out = Path(args.output_dir) / args.name
    meta = {"task": args.task, "seed": args.seed, "part": args.part, "dataset": args.dataset,
            "heldout_split": work.heldout, "split_seed": args.split_seed, "train_half": 0,
            "items": [item.id for item in work.items], "labels": list(work.items[0].label_space.labels),
            "annotators": list(ANNOTATORS),
            "judges": {name: {"features": f, "reduce": r, "with_label": w, "train_items": t, "description": d}
                       for name, (f, r, w, t, d) in JUDGES.items()},
            "sources": {s.name: {"kind": s.kind, "step": s.step, "rows": s.step * args.batch_size if s.step else None,
                                 "items": s.limit or len(work.items), "description": s.description}
                        for s in sources},
            "arguments": asdict(args), "commands": work.commands, "precision": _precision(precision_report()),
            "precision_report": precision_report(),
            "machine": _machine(), "wall_s": {**work.wall, "total": round(time.perf_counter() - start, 1)},
            # jobs kept from an earlier invocation: their own recorded time (training: the trainer's runtime, no
            # model loading); "total" is this invocation's alone
            "wall_s_earlier": sorted(work.earlier)}
    write_slice(out, meta, responses, labels)
    log(f"slice {args.name}: {len(responses)} judged responses, {len(labels)} label distributions -> {out}")
    return {"output": str(out), "responses": len(responses), "labels": len(labels), "wall_s": meta["wall_s"]}


def slice_seconds(wall: dict, earlier: tuple | list = ()) -> float:
    """A slice's wall time: its last invocation's total plus the jobs it kept from earlier ones (their own times)."""
    return float(wall.get("total", 0.0)) + sum(float(v) for k, v in wall.items() if k in set(earlier))


def write_slice(out: Path, meta: dict, responses: list[dict], labels: list[dict]) -> None:
    """All three files into a fresh folder beside `out`, then swapped in: a killed write leaves the old slice."""
    from capo.io import write_jsonl

    fresh = out.with_name(out.name + ".partial")
    shutil.rmtree(fresh, ignore_errors=True)
    write_jsonl(fresh / "responses.jsonl", responses)
    write_jsonl(fresh / "labels.jsonl", labels)
    write_json(fresh / "slice.json", meta)
    if out.exists():
        shutil.rmtree(out)
    fresh.rename(out)


def _precision(report: dict) -> str:
    return f"{report['device']} auto = {report['auto_dtype']} (native bf16: {report['native_bf16']})"


def _machine() -> str:
    import os

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__} {torch.backends.cpu.get_cpu_capability()}, avx512_bf16 "
            f"{torch.cpu._is_avx512_bf16_supported()}, amx {torch.cpu._is_amx_tile_supported()}")
