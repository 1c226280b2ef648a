"""Resuming only from a complete checkpoint (`capo.io.last_complete_checkpoint`), the one rule of SFT / CAPO
(`capo.train.explainers._resume_point`), the perspectivist encoder and the soft-label fine-tuning: `Trainer` writes
a checkpoint in place with `trainer_state.json` last, so a kill during a save leaves a newer folder that must be
skipped. (Real kills and resumes: tests/test_explainers.py, tests/test_finetune.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from capo.errors import DataError
from capo.io import checkpoint_problem, last_complete_checkpoint


def _checkpoint(root: Path, step: int, *, state: str | None = "{}", weights: str | None = "adapter_model.safetensors"
                ) -> Path:
    """A checkpoint folder as `Trainer._save_checkpoint` leaves it; `state` / `weights` None: not written (yet)."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(b"optimizer")
    if weights:
        (folder / weights).write_bytes(b"weights")
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def test_a_truncated_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path):
    complete = _checkpoint(tmp_path, 2, state=json.dumps({"global_step": 2}))
    _checkpoint(tmp_path, 10, weights="model.safetensors")  # a full model (perspectivist, fine-tuning): complete
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()  # killed before the trainer state was written
    assert last_complete_checkpoint(tmp_path) == str(complete)
    _checkpoint(tmp_path, 4, state=None)
    _checkpoint(tmp_path, 6, state='{"global_step": 6, "log_hist')  # killed while writing the trainer state
    _checkpoint(tmp_path, 8, weights=None)  # trainer state but no weights
    (tmp_path / "checkpoint-12").write_text("a file, not a checkpoint")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(complete)
    assert checkpoint_problem(complete) is None
    assert checkpoint_problem(tmp_path / "checkpoint-4") == "no trainer_state.json (its save was interrupted)"
    assert "cut short" in checkpoint_problem(tmp_path / "checkpoint-6")
    assert checkpoint_problem(tmp_path / "checkpoint-8").startswith("no model weights")


def test_no_complete_checkpoint_means_a_fresh_start(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    assert last_complete_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 3, state=None)
    assert last_complete_checkpoint(tmp_path) is None


def test_sft_and_capo_resume_from_the_last_complete_checkpoint(tmp_path):
    from capo.train.explainers import _resume_point

    args = lambda value: SimpleNamespace(resume_from_checkpoint=value, output_dir=str(tmp_path / "run"))
    assert _resume_point(args("true")) is None  # no output folder yet: fresh
    complete = _checkpoint(tmp_path / "run", 3)
    _checkpoint(tmp_path / "run", 6, state=None)  # the save at step 6 was cut short by a kill
    assert _resume_point(args("true")) == _resume_point(args("auto")) == str(complete)
    assert _resume_point(args("false")) is None and _resume_point(args(None)) is None
    assert _resume_point(args(str(complete))) == str(complete)
    with pytest.raises(DataError) as err:  # named explicitly, an incomplete checkpoint is a one-line error
        _resume_point(args(str(tmp_path / "run" / "checkpoint-6")))
    assert str(err.value) == (f"{tmp_path / 'run' / 'checkpoint-6'}: field 'resume_from_checkpoint': not a complete "
                              "checkpoint: no trainer_state.json (its save was interrupted)")
    (complete / "trainer_state.json").unlink()
    assert _resume_point(args("true")) is None  # nothing complete left: a fresh start


def test_every_trainer_uses_the_shared_rule():
    """The perspectivist encoder and the fine-tuning resume through `capo.io.last_complete_checkpoint` too (not
    transformers' `get_last_checkpoint`, which returns the newest folder whatever it holds)."""
    import capo.evaluate.finetune.trainer as finetune
    from capo.lewidi import perspectivist

    assert perspectivist.last_complete_checkpoint is finetune.last_complete_checkpoint is last_complete_checkpoint
    library = Path(finetune.__file__).parents[2]
    callers = [p for p in library.rglob("*.py") if "get_last_checkpoint(" in p.read_text(encoding="utf-8")]
    assert not callers
