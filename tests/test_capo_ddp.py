"""CAPO under DDP: a 2-process run on CPU (gloo) equals the 1-process run with the same global batch, for TRL's
`DPOTrainer` and for the shared-prefix trainer, whose ranks get different numbers of pairs (groups of 2 and 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import accelerate_launch_two_cpu_processes, load_script

pytestmark = pytest.mark.slow

COMMON = ["--annotator", "A2", "--init_from", "base", "--bf16", "false", "--gradient_checkpointing", "false",
          "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--lora_r", "8", "--lora_alpha", "16",
          "--dataloader_num_workers", "0", "--learning_rate", "1e-2", "--lr_scheduler_type", "constant",
          "--max_steps", "3", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
          "--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "0.2"]
# Each run's data is exactly one global batch, so every step sees all of it whatever the shuffling and sharding.
PATHS = {
    # 4 pairs: 1 process x 4, or 2 processes x 2. Sigmoid only: TRL's sft term is a per-rank mean over chosen
    # tokens, so with ragged token counts its 2-process loss is not the 1-process one (0.2% off here).
    "stock": {"rows": 4, "extra": ["--loss_type", "sigmoid", "--loss_weights", "1.0"]},
    "packed": {"rows": 5, "extra": ["--shared_prefix", "true"]},  # 2 groups (2 + 3 pairs): 1 x 2, or 2 x 1
}


def _args(corpus_lm, out: Path, path: str, per_device: int, *extra: str) -> list[str]:
    rows = str(PATHS[path]["rows"])
    return ["--model_name_or_path", str(corpus_lm), "--output_dir", str(out), *COMMON, "--max_train_rows", rows,
            "--max_eval_rows", rows, "--per_device_train_batch_size", str(per_device),
            "--per_device_eval_batch_size", str(per_device), *PATHS[path]["extra"], *extra]


def _one_process(args: list[str]) -> None:
    load_script("recipes/capo.py").main(args)


def _two_processes(args: list[str]) -> None:
    result = accelerate_launch_two_cpu_processes("recipes/capo.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]


def _run_record(out: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    state = json.loads((out / "trainer_state.json").read_text())
    steps = [row for row in state["log_history"] if "loss" in row]
    keys = ("loss", "grad_norm", "rewards/margins", "rewards/chosen", "logps/chosen", "rewards/accuracies")
    manifest = json.loads((out / "run_manifest.json").read_text())
    weights = load_file(str(out / "adapter_model.safetensors"))
    return {"steps": [{k: row[k] for k in keys} for row in steps], "world_size": manifest["world_size"],
            "eval": {k: v for k, v in manifest["metrics"].items() if k in ("eval_loss", "eval_rewards/margins",
                                                                         "eval_rewards/chosen")},
            "weights": {k: v.to(torch.float64) for k, v in weights.items()}}


def _assert_same_run(a: dict, b: dict) -> None:
    import torch

    assert len(a["steps"]) == len(b["steps"]) == 3
    for row_a, row_b in zip(a["steps"], b["steps"], strict=True):
        # grad_norm too: Adam's updates hide a wrongly scaled gradient, the norm does not
        assert row_a == pytest.approx(row_b, rel=1e-4, abs=1e-5)
    assert a["eval"] == pytest.approx(b["eval"], rel=1e-5, abs=1e-5) and len(a["eval"]) == 3
    assert a["weights"].keys() == b["weights"].keys()
    for name, weight in a["weights"].items():
        # Adam normalises the float noise of near-zero gradients (lora_A gets none at step 1) into ~1e-5 changes:
        # 1% of one learning-rate step (1e-2), far below what a wrong batch average moves
        assert torch.allclose(weight, b["weights"][name], rtol=1e-3, atol=1e-4), name
    assert a["steps"][-1]["loss"] != pytest.approx(a["steps"][0]["loss"], abs=1e-3)  # it trained


def test_packed_groups_are_ragged(corpus_lm):
    """Precondition of the packed DDP test: its two groups hold different numbers of pairs."""
    from transformers import AutoTokenizer

    from capo.train.explainers import CapoArguments, build_pair_datasets
    from capo.train.packed import group_pairs

    train, held, _ = build_pair_datasets(CapoArguments(annotator="A2", max_train_rows=5, max_eval_rows=5))
    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    for rows in (train, held):
        assert sorted(len(g.pairs) for g in group_pairs(list(rows), tokenizer)) == [2, 3]


@pytest.mark.heavy  # two processes under accelerate launch
@pytest.mark.parametrize("path", ["stock", "packed"])
def test_two_process_capo_equals_one_process(corpus_lm, tmp_path, path):
    one, two = tmp_path / "one", tmp_path / "two"
    global_batch = 4 if path == "stock" else 2
    _one_process(_args(corpus_lm, one, path, global_batch))
    _two_processes(_args(corpus_lm, two, path, global_batch // 2))
    a, b = _run_record(one), _run_record(two)
    assert (a["world_size"], b["world_size"]) == (1, 2)
    _assert_same_run(a, b)
    if path == "packed":  # micro-batches of 2 and 3 pairs accumulated are also the step's mean over its 5 pairs
        accumulated = tmp_path / "accumulated"
        _one_process(_args(corpus_lm, accumulated, path, 1, "--gradient_accumulation_steps", "2",
                                   "--per_device_eval_batch_size", "2"))
        _assert_same_run(a, _run_record(accumulated))
