"""Helpers the stage groups share: the refusal of a job's arguments as the pipeline's, the explainers that
predict as annotators.
"""

from __future__ import annotations

from pathlib import Path

from capo.errors import DataError
from capo.pipeline import layout
from capo.pipeline.cache import Context
from capo.pipeline.launch import Job


def use_cpu() -> str:
    # The same config on a CPU machine and on GPUs: the trainers' device follows the machine.
    import torch

    return "false" if torch.cuda.is_available() else "true"


def refused(err: DataError, field: str | None, job: Job) -> DataError:
    """A job's refusal as the pipeline's: an error located in a file (a recipe config line) stays as it is; any other
    (an override, a value the pipeline passes) names the pipeline field and the entry point that refused it."""
    return err if err.path is not None else DataError(f"{job.script} refuses it: {err}", field=field)


def file_sha256(path: Path) -> str:
    from capo.manifest import file_sha256

    return file_sha256(path)


def explainer_predictors(ctx: Context) -> dict[str, str | None]:
    """Predictor name -> `--explainers` template: the base model alone (None), SFT and CAPO per seed, and the
    conditioned CAPO adapter per seed when there is one (a template without {annotator}: prompted with each id)."""
    from capo.data.schema import CONDITIONED

    seeds = ctx.args.seeds
    return {"base": None, **{f"{kind} s{seed}": layout.explainer_template(ctx.root, kind, seed)
                             for kind in layout.KINDS for seed in seeds},
            **{f"cond s{seed}": layout.explainer_template(ctx.root, "capo", seed).replace("{annotator}", CONDITIONED)
               for seed in (seeds if ctx.args.conditioned else ())}}


def slug(name: str) -> str:
    return name.replace(" ", "_")
