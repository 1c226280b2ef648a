"""Shared fixtures. The tiny corpus LM is built once per test session (seconds) and stands in for a hub model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def corpus_lm(tmp_path_factory) -> Path:
    """Path of a tiny corpus LM (size "test"), loadable with AutoModelForCausalLM / AutoTokenizer."""
    from capo.train.corpus_lm import SIZES, build_corpus_lm

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
