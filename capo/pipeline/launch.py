"""Running one job of a stage exactly as its entry point would: the same command-line arguments, parsed by the same
dataclasses, then the same library call — in this process (launcher python: no interpreter start-up per job), or
as `accelerate launch <entry point> <arguments>` (launcher accelerate: several processes / GPUs per job). Either way
the report quotes the command line that reproduces the job on its own."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from capo.errors import DataError
from capo.manifest import job_command
from capo.pipeline.arguments import launcher_argv

REPO = Path(__file__).resolve().parents[2]  # recipes/ and eval/ live here


@dataclass(frozen=True)
class Job:
    """An entry point: `parse(argv)` (its own argument parsing and checks) and `run(parsed)` (its library call)."""

    script: str
    parse: Callable[[list[str]], tuple]
    run: Callable[..., object]  # (parsed, **options of the in-process call)
    distributed: bool = True  # runs under accelerate launch when the launcher is accelerate


def _parse_sft(argv: list[str]) -> tuple:
    from trl import ModelConfig, SFTConfig

    from capo.cli import parse_arguments
    from capo.train.explainers import CapoArguments, ExplainerScriptArguments

    return parse_arguments((ExplainerScriptArguments, CapoArguments, SFTConfig, ModelConfig), argv)


def _run_sft(parsed: tuple) -> dict:
    from capo.train.explainers import train_sft

    return train_sft(*parsed)


@dataclass
class _CapoRecipeOnly:
    """recipes/capo.py's own option (it trains a missing SFT adapter with it); the pipeline's sft stage has trained
    that adapter already, so a CAPO config that names one parses here too and the value is not used."""

    sft_config: str | None = None


def _parse_capo(argv: list[str]) -> tuple:
    from trl import DPOConfig, ModelConfig

    from capo.cli import parse_arguments
    from capo.train.explainers import CapoArguments, ExplainerScriptArguments

    parsed = parse_arguments((ExplainerScriptArguments, CapoArguments, DPOConfig, ModelConfig, _CapoRecipeOnly), argv)
    if parsed[0].shared_prefix:  # as recipes/capo.py: refuse DPOConfig options the packed trainer lacks, now
        from capo.train.packed import check_options

        check_options(parsed[2])
    return parsed[:4]


def _run_capo(parsed: tuple) -> dict:
    from capo.train.explainers import train_capo

    return train_capo(*parsed)


def _parse_generate(argv: list[str]) -> tuple:
    from capo.cli import parse_arguments
    from capo.generate.explanations import GenerateArguments

    return parse_arguments((GenerateArguments,), argv)


def _run_generate(parsed: tuple) -> dict:
    from capo.generate.explanations import run_generation

    return run_generation(parsed[0])


def _parse_mjd(argv: list[str]) -> tuple:
    from capo.cli import parse_arguments
    from capo.mjd.run import MJDScriptArguments

    (args,) = parse_arguments((MJDScriptArguments,), argv)
    if args.explanations == "none" and args.mode != "none":  # as recipes/mjd.py: else every prompt fails
        raise DataError(f"'none' leaves nothing to show in mode {args.mode!r}: use mode none, or explanations "
                        "human or a file", field="explanations")
    return (args,)


def _run_mjd(parsed: tuple, log: Callable[[str], None] = print) -> dict:
    from capo.mjd.run import run_mjd

    return run_mjd(parsed[0], log=log)


def _parse_perspectivist(argv: list[str]) -> tuple:
    from transformers import TrainingArguments

    from capo.cli import parse_arguments
    from capo.lewidi.perspectivist import CPU_TRAINING_DEFAULTS, PerspectivistArguments

    return parse_arguments((PerspectivistArguments, TrainingArguments), argv, defaults=CPU_TRAINING_DEFAULTS)


def _run_perspectivist(parsed: tuple) -> dict:
    from capo.lewidi.perspectivist import train_perspectivist

    return train_perspectivist(*parsed)


def _parse_finetune(argv: list[str]) -> tuple:
    from capo.evaluate.finetune.arguments import parse_arguments

    return parse_arguments(argv)


def _run_finetune(parsed: tuple) -> dict:
    from capo.evaluate.finetune.trainer import finetune

    return finetune(*parsed)


SFT = Job("recipes/sft.py", _parse_sft, _run_sft)
CAPO = Job("recipes/capo.py", _parse_capo, _run_capo)
GENERATE = Job("recipes/generate.py", _parse_generate, _run_generate)
MJD = Job("recipes/mjd.py", _parse_mjd, _run_mjd)
PERSPECTIVIST = Job("recipes/perspectivist.py", _parse_perspectivist, _run_perspectivist, distributed=False)
FINETUNE = Job("recipes/finetune.py", _parse_finetune, _run_finetune, distributed=False)


_ANSI_C_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def shell_quote(arg: str) -> str:
    """`shlex.quote`, but a value with a line break or tab as bash's `$'...'`, so a command stays on one line."""
    if not any(c in arg for c in "\n\r\t"):
        return shlex.quote(arg)
    return "$'" + arg.translate(_ANSI_C_ESCAPES) + "'"


def command_line(args, job: Job, argv: list[str]) -> str:
    """The command that runs this job on its own, on one line (what the report quotes)."""
    if args.launcher == "accelerate" and job.distributed:
        words = ["accelerate", "launch", *launcher_argv(args.launcher_args), job.script, *argv]
    else:
        words = ["python", job.script, *argv]
    return " ".join(map(shell_quote, words))


def launch(args, job: Job, argv: list[str], **options) -> str:
    """Run `job` with `argv` under the configured launcher (`options` go to an in-process run, e.g. a logger);
    returns its command line."""
    if args.launcher == "accelerate" and job.distributed:
        script = REPO / job.script
        if not script.is_file():
            raise DataError("launcher accelerate runs the repository's entry points, and this one is missing",
                            path=str(script), field="launcher")
        command = [sys.executable, "-m", "accelerate.commands.launch", *launcher_argv(args.launcher_args),
                   str(script), *argv]
        result = subprocess.run(command, check=False)  # its output and bars go straight to the terminal
        if result.returncode != 0:
            raise DataError(f"{job.script} exited with status {result.returncode} (its error is above)",
                            field="launcher")
    else:
        with job_command([job.script, *argv]):  # its manifest records this job's command, not the pipeline's
            job.run(job.parse(argv), **options)
    return command_line(args, job, argv)
