"""Running one job of a stage exactly as its entry point would: the same command-line arguments, parsed by the same
dataclasses, then the same library call — in this process (launcher python: no interpreter start-up per job), or
as `accelerate launch <entry point> <arguments>` (launcher accelerate: several processes / GPUs per job). Either way
the report quotes the command line that reproduces the job on its own."""

from __future__ import annotations

import functools
import importlib.util
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from capo.errors import DataError
from capo.manifest import job_command
from capo.pipeline.arguments import launcher_argv

REPO = Path(__file__).resolve().parents[2]  # recipes/ and eval/ live here


@dataclass(frozen=True)
class Job:
    """An entry point, run through its own module: `parse(argv)` is the script's `parse` (its argument parsing and
    the checks that need no work), `run(argv)` the script's `main` without its `run_main` wrapper (a refusal stays a
    `DataError` for the pipeline to locate). Every entry point the pipeline launches defines both, so the command
    the report quotes runs exactly what the stage ran."""

    script: str
    distributed: bool = True  # runs under accelerate launch when the launcher is accelerate

    def module(self):
        return _script_module(self.script)

    def parse(self, argv: list[str]) -> tuple:
        return self.module().parse(argv)

    def run(self, argv: list[str]):
        return self.module().main.__wrapped__(argv)


@functools.cache
def _script_module(script: str):
    """An entry point loaded as a module (once), under a name of its own: `recipes/capo.py` is no `capo`."""
    path = REPO / script
    if not path.is_file():
        raise DataError("the pipeline runs the repository's entry points, and this one is missing", path=str(path))
    name = "capo_entry_" + script.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


SFT = Job("recipes/sft.py")
CAPO = Job("recipes/capo.py")
GENERATE = Job("recipes/generate.py")
MJD = Job("recipes/mjd.py")
PERSPECTIVIST = Job("recipes/perspectivist.py", distributed=False)
LEWIDI = Job("eval/lewidi.py", distributed=False)
FINETUNE = Job("recipes/finetune.py", distributed=False)
CALIBRATE = Job("eval/calibrate.py", distributed=False)
DISTRIBUTIONS = Job("eval/distributions.py", distributed=False)
JURY = Job("eval/jury.py", distributed=False)
ATTRIBUTION = Job("eval/attribution.py", distributed=False)
IMITATION = Job("eval/imitation.py", distributed=False)
VARIABILITY = Job("eval/variability.py", distributed=False)


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


def launch(args, job: Job, argv: list[str]) -> str:
    """Run `job` with `argv` under the configured launcher; returns its command line."""
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
            job.run(argv)
    return command_line(args, job, argv)
