"""The study's stages, in order: data -> sft -> capo -> generation -> attribution -> imitation -> variability -> mjd ->
distributions -> finetune -> jury -> lewidi_explainers -> lewidi -> report (finetune, jury and lewidi_explainers off
by default).

Each stage is a small function of the run context that calls what its entry point calls (the recipes' argument
dataclasses and library functions, `capo.pipeline.launch`), writes into `<output_dir>/<stage>/`, and declares what
shapes its outputs (`capo.pipeline.cache.Stage`: config keys, input files, upstream stages). Each returns a summary
with `line` (printed when it finishes) and `commands` (the entry-point command lines that reproduce its outputs, which
the report quotes).

One module per group of stages (`explainers`, `generation`, `behaviour`, `distributions`, `lewidi`;
`common` holds what they share); this file holds the list.
"""

from __future__ import annotations

from capo.pipeline.arguments import named_paths
from capo.pipeline.cache import Stage
from capo.pipeline.report import write_report
from capo.pipeline.stages.behaviour import run_attribution, run_imitation, run_variability
from capo.pipeline.stages.distributions import (
    mjd_files,
    plan_finetune,
    plan_mjd,
    run_distributions,
    run_finetune,
    run_jury_stage,
    run_mjd_stage,
)
from capo.pipeline.stages.explainers import data_files, plan_explainers, run_data, train_explainers
from capo.pipeline.stages.generation import plan_generation, run_generation
from capo.pipeline.stages.lewidi import plan_lewidi, run_lewidi, run_lewidi_explainers

TRAIN_KEYS = ("model", "tasks", "annotators", "seeds", "split_seed", "nli_dataset", "conditioned", "launcher",
              "launcher_args")
# The jury and the LeWiDi explainers: the explainers of these keys (through sft/capo), scored with these.
SCORING_KEYS = ("model", "tasks", "annotators", "seeds", "split_seed", "nli_dataset", "conditioned", "dtype",
                "generate_batch_size")


STAGES: tuple[Stage, ...] = (
    Stage("data", run_data, keys=("tasks", "annotators", "split_seed", "nli_dataset"), files=data_files),
    Stage("sft", train_explainers("sft"), keys=(*TRAIN_KEYS, "sft_args"), inputs=("data",),
          files=lambda a: [a.model, a.sft_config], plan=plan_explainers("sft")),
    Stage("capo", train_explainers("capo"), keys=(*TRAIN_KEYS, "capo_args"), inputs=("data", "sft"),
          files=lambda a: [a.model, a.capo_config], plan=plan_explainers("capo")),
    Stage("generation", run_generation,
          keys=(*TRAIN_KEYS, "dtype", "generate_kinds", "generate_base", "prompting_shots",
                "prompting_response_prefix", "prompting_stop", "generate_limit", "generate_max_new_tokens",
                "generate_batch_size", "generate_shard_size"),
          inputs=("data", "sft", "capo"), files=lambda a: [a.model], plan=plan_generation,
          enabled=lambda a: bool(a.generate_kinds or a.generate_base or a.prompting_shots or a.conditioned)),
    Stage("attribution", run_attribution,
          keys=("model", "tasks", "annotators", "seeds", "split_seed", "nli_dataset", "conditioned",
                "attribution_splits", "attribution_limit", "exclude_pretrained", "dtype"),
          inputs=("data", "sft", "capo"), files=lambda a: [a.model]),
    Stage("imitation", run_imitation,
          keys=("tasks", "split_seed", "nli_dataset", "judges", "judge_features", "judge_limit", "imitation_ks",
                "embeddings", "dtype"),
          inputs=("data", "generation"), files=lambda a: [a.model] if "llm" in a.judges else []),
    Stage("variability", run_variability,
          keys=("tasks", "annotators", "split_seed", "nli_dataset", "embeddings", "model_explanations"),
          inputs=("data", "generation"),
          files=lambda a: list(named_paths(a.model_explanations, "model_explanations").values())),
    Stage("mjd", run_mjd_stage, keys=("mjd_runs", "mjd_args", "calibrate", "launcher", "launcher_args"),
          inputs=("data",), files=mjd_files, plan=plan_mjd, enabled=lambda a: bool(a.mjd_runs)),
    Stage("distributions", run_distributions, inputs=("data", "mjd")),
    Stage("finetune", run_finetune, keys=("finetune", "finetune_args", "seeds"), inputs=("mjd", "distributions"),
          files=lambda a: [a.finetune_config], plan=plan_finetune, enabled=lambda a: a.finetune),
    # The explainers' label probabilities: the jury (its table joins the MJDs' in the report; it does not read
    # them, so a changed MJD run leaves it cached) and the LeWiDi predictors (beside the lewidi stage's constants).
    Stage("jury", run_jury_stage, keys=SCORING_KEYS, inputs=("data", "sft", "capo"), files=lambda a: [a.model],
          enabled=lambda a: a.jury),
    Stage("lewidi_explainers", run_lewidi_explainers, keys=(*SCORING_KEYS, "lewidi_datasets"),
          inputs=("data", "sft", "capo"), files=lambda a: [a.model], enabled=lambda a: a.lewidi_explainers),
    Stage("lewidi", run_lewidi, keys=("lewidi_datasets", "perspectivist", "perspectivist_args", "seeds"),
          inputs=("data",), files=lambda a: [a.perspectivist_config] if a.perspectivist else [], plan=plan_lewidi,
          enabled=lambda a: bool(a.lewidi_datasets)),
)


STAGES = (*STAGES, Stage("report", write_report, inputs=tuple(s.name for s in STAGES), optional_inputs=True))


STAGE_NAMES = tuple(s.name for s in STAGES)
