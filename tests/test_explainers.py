"""SFT and CAPO recipes on the tiny corpus LM: loss goes down, adapters reload with PEFT, manifests and eval hooks,
CAPO starts from (and is scored against) the target's SFT adapter, training it first when missing, resume after a
kill, one-line errors, and a 2-process DDP run on CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, accelerate_launch_two_cpu_processes, call_script, load_script
from test_explainers_packed import independent_rewards

from capo.train.explainers import CapoArguments, build_pair_datasets

pytestmark = pytest.mark.slow

FAST = ["--bf16", "false", "--gradient_checkpointing", "false", "--use_cpu", "true", "--report_to", "none",
        "--disable_tqdm", "true", "--max_length", "256", "--lora_r", "8", "--lora_alpha", "16",
        "--dataloader_num_workers", "0", "--logging_steps", "1", "--eval_strategy", "no"]


def _sft_args(corpus_lm, out, *extra):
    # Four rows in one batch: every step sees the same batch, so the loss must fall step after step.
    return ["--model_name_or_path", corpus_lm, "--output_dir", out, "--annotator", "A2", *FAST,
            "--max_train_rows", "4", "--max_eval_rows", "8", "--per_device_train_batch_size", "4",
            "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--max_steps", "8", "--save_strategy", "no", *extra]


def _fails(capsys, recipe: str, *argv) -> str:
    capsys.readouterr()  # drop what earlier steps printed
    with pytest.raises(SystemExit) as exit_info:
        load_script(f"recipes/{recipe}.py").main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def _losses(folder: Path) -> list[float]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return [row["loss"] for row in state["log_history"] if "loss" in row]


def _check_adapter(folder: Path, corpus_lm: Path) -> None:
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    config = PeftConfig.from_pretrained(folder)
    assert not config.modules_to_save  # vLLM loads adapters without saved full modules
    targets = {name.rsplit(".", 1)[-1] for name in config.target_modules}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets  # all-linear
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(corpus_lm), folder)
    assert list(model.peft_config) == ["default"]
    assert not (folder / "ref").exists()  # DPO's frozen reference copy is not saved as a second adapter


@pytest.fixture(scope="module")
def sft_run(corpus_lm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "{task}" / "{annotator}"
    result = call_script("recipes/sft.py", *_sft_args(corpus_lm, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(str(out).format(task="nli", annotator="A2"))


def test_sft_learns_and_writes_adapter_manifest_and_eval_nll(sft_run, corpus_lm):
    losses = _losses(sft_run)
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    _check_adapter(sft_run, corpus_lm)
    manifest = json.loads((sft_run / "run_manifest.json").read_text())
    assert (manifest["stage"], manifest["annotator"], manifest["task"]) == ("sft", "A2", "nli")
    assert manifest["train_rows"] == 4 and manifest["eval_rows"] == 8 and manifest["world_size"] == 1
    assert manifest["config"]["model"]["model_name_or_path"] == str(corpus_lm)
    assert manifest["config"]["training"]["completion_only_loss"] is True
    assert manifest["data_files"] and manifest["packages"]["trl"]
    assert 0 < manifest["metrics"]["eval_loss"] < 20  # held-out NLL on the target's dev responses


def test_capo_from_sft_adapter(sft_run, corpus_lm, tmp_path, capsys):
    out = tmp_path / "capo" / "{task}" / "{annotator}"
    sft_template = str(sft_run).replace("/nli/A2", "/{task}/{annotator}")
    result = call_script(
        "recipes/capo.py", "--model_name_or_path", corpus_lm, "--output_dir", out, "--annotator", "A2", *FAST,
        "--sft_adapter", sft_template, "--max_train_rows", "4", "--max_eval_rows", "8",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_steps", "6",
        "--lr_scheduler_type", "constant",
        "--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "0.2", "--save_strategy", "no",
        "--eval_strategy", "steps", "--eval_steps", "6",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "capo" / "nli" / "A2"
    losses = _losses(folder)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.05, losses
    # the evaluation logged at the final step is the run's held-out result: no second pass over the eval rows
    evals = [r for r in json.loads((folder / "trainer_state.json").read_text())["log_history"] if "eval_loss" in r]
    assert [r["step"] for r in evals] == [6]
    _check_adapter(folder, corpus_lm)
    manifest = json.loads((folder / "run_manifest.json").read_text())
    assert manifest["init_from"] == "sft" and manifest["sft_adapter"] == str(sft_run)
    assert manifest["config"]["training"]["loss_type"] == ["sigmoid", "sft"]
    # Eval hook on dev pairs, reproduced by an unpacked scorer: the saved adapter against the SFT adapter (the
    # reference), not against the base model.
    _, held, _ = build_pair_datasets(CapoArguments(annotator="A2", max_eval_rows=8))
    expected = independent_rewards(corpus_lm, folder, sft_run, list(held), beta=0.1)
    against_base = independent_rewards(corpus_lm, folder, None, list(held), beta=0.1)
    metrics = manifest["metrics"]
    assert metrics["eval_rewards/chosen"] == pytest.approx(expected["rewards/chosen"], abs=1e-4)
    assert metrics["eval_rewards/margins"] == pytest.approx(expected["rewards/margins"], abs=1e-4)
    assert abs(against_base["rewards/chosen"] - expected["rewards/chosen"]) > 1e-2

    wrong = _fails(capsys, "capo", "--model_name_or_path", corpus_lm, "--output_dir", tmp_path / "x",
                   "--annotator", "A3", *FAST, "--sft_adapter", sft_run)
    assert "is for A2 (nli), not A3" in wrong
    missing = _fails(capsys, "capo", "--model_name_or_path", corpus_lm, "--output_dir", tmp_path / "x", *FAST,
                     "--annotator", "A4", "--sft_adapter", tmp_path / "none", "--sft_config", tmp_path / "no.yaml")
    assert missing == f"error: {tmp_path / 'no.yaml'}: field 'sft_config': SFT config not found"
    assert not (tmp_path / "x").exists() and not (tmp_path / "none").exists()


def test_capo_trains_missing_sft_adapter_first(corpus_lm, tmp_path, capsys):
    """A fresh clone: init_from sft without the adapter trains it (one line says so), then CAPO starts from it."""
    import yaml

    sft_config = yaml.safe_load((ROOT / "recipes/configs/sft_tiny.yaml").read_text())
    sft_config.update(max_steps=2, eval_strategy="no", save_strategy="no", logging_steps=1, warmup_steps=0)
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft_config))
    sft_template = tmp_path / "sft" / "{task}" / "{annotator}"
    capsys.readouterr()
    load_script("recipes/capo.py").main([str(a) for a in (
        "--model_name_or_path", corpus_lm, "--output_dir", tmp_path / "capo", "--annotator", "A2", *FAST,
        "--sft_adapter", sft_template, "--sft_config", tmp_path / "sft.yaml", "--max_train_rows", "4",
        "--max_eval_rows", "4", "--per_device_train_batch_size", "4", "--max_steps", "2", "--save_strategy", "no")])
    said = [line for line in capsys.readouterr().err.splitlines() if "SFT adapter" in line]
    adapter = tmp_path / "sft" / "nli" / "A2"
    config = tmp_path / "sft.yaml"
    assert said == [f"no SFT adapter for A2 (nli) at {adapter}: training it first (recipes/sft.py, config {config})"]
    sft_manifest = json.loads((adapter / "run_manifest.json").read_text())
    assert (sft_manifest["stage"], sft_manifest["annotator"]) == ("sft", "A2") and len(_losses(adapter)) == 2
    assert sft_manifest["config"]["model"]["model_name_or_path"] == str(corpus_lm)  # the CAPO run's model
    _check_adapter(adapter, corpus_lm)
    manifest = json.loads((tmp_path / "capo" / "run_manifest.json").read_text())
    assert manifest["init_from"] == "sft" and manifest["sft_adapter"] == str(adapter)
    assert len(_losses(tmp_path / "capo")) == 2


@pytest.mark.heavy
def test_one_conditioned_adapter_for_all_annotators_sft_then_capo(corpus_lm, tmp_path):
    """--annotator all: one adapter trained on every annotator's rows (ids in the prompts), CAPO from it."""
    from capo.data.prompts import persona_line
    from capo.train.explainers import build_sft_datasets

    train, _, _ = build_sft_datasets(CapoArguments(annotator="all", max_train_rows=8, max_eval_rows=8))
    assert {row["annotator"] for row in train} == {"A1", "A2", "A3", "A4"}  # an item-major prefix covers everyone
    assert all(row["prompt"][0]["content"].startswith(persona_line(row["annotator"])) for row in train)
    sft = tmp_path / "sft" / "{task}" / "{annotator}"
    result = call_script("recipes/sft.py", "--model_name_or_path", corpus_lm, "--output_dir", sft, "--annotator", "all",
                        *FAST, "--max_train_rows", "8", "--per_device_train_batch_size", "4", "--max_steps", "2",
                        "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "sft" / "nli" / "all" / "run_manifest.json").read_text())
    assert manifest["annotator"] == "all" and manifest["training_data"]["annotator"] == "all"
    assert set(manifest["training_data"]["item_ids"]) == {row["id"] for row in train}
    result = call_script("recipes/capo.py", "--model_name_or_path", corpus_lm, "--output_dir",
                        tmp_path / "capo" / "{task}" / "{annotator}", "--annotator", "all", *FAST, "--sft_adapter", sft,
                        "--max_train_rows", "4", "--per_device_train_batch_size", "2", "--max_steps", "2",
                        "--save_strategy", "no", "--shared_prefix", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    capo = json.loads((tmp_path / "capo" / "nli" / "all" / "run_manifest.json").read_text())
    assert capo["annotator"] == "all" and capo["sft_adapter"] == str(tmp_path / "sft" / "nli" / "all")
    _check_adapter(tmp_path / "capo" / "nli" / "all", corpus_lm)


def test_unknown_annotator_and_task_are_one_line_errors(corpus_lm, tmp_path, capsys):
    err = _fails(capsys, "sft", "--model_name_or_path", corpus_lm, "--output_dir", tmp_path, "--annotator", "B1")
    assert err == "error: unknown annotator 'B1' (valid: A1, A2, A3, A4, all)"
    err = _fails(capsys, "capo", "--config", ROOT / "recipes/configs/capo_tiny.yaml", "--task", "qa")
    assert err == "error: unknown task 'qa' (valid: nli, paraphrase)"
    err = _fails(capsys, "capo", "--config", ROOT / "recipes/configs/capo_tiny.yaml", "--init_from", "sft2")
    assert err == "error: unknown init_from 'sft2' (valid: sft, base)"
    assert not any(tmp_path.iterdir())


def test_resume_after_kill_paraphrase(corpus_lm, tmp_path):
    out = tmp_path / "run"
    args = _sft_args(corpus_lm, out, "--task", "paraphrase", "--max_steps", "6", "--save_strategy", "steps",
                     "--save_steps", "3")
    sft = load_script("recipes/sft.py")
    sft.main([str(a) for a in args])
    reference = _losses(out)
    # Simulate a kill during the save at step 6: checkpoint-3 is complete, checkpoint-6 holds weights but no trainer
    # state (Trainer writes it last); no final adapter or manifest.
    for path in out.iterdir():
        if path.name not in ("checkpoint-3", "checkpoint-6"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / "checkpoint-6" / "trainer_state.json").unlink()
    # A different seed would change a fresh run's first losses; a resumed run keeps them from the checkpoint (the
    # complete checkpoint-3, not the newer, truncated checkpoint-6).
    sft.main([str(a) for a in args] + ["--seed", "7", "--resume_from_checkpoint", "true"])
    resumed = _losses(out)
    assert len(resumed) == 6 and resumed[:3] == reference[:3]
    assert json.loads((out / "run_manifest.json").read_text())["task"] == "paraphrase"
    _check_adapter(out, corpus_lm)


@pytest.mark.heavy
def test_ddp_two_processes_on_cpu(corpus_lm, tmp_path):
    out = tmp_path / "ddp"
    result = accelerate_launch_two_cpu_processes("recipes/sft.py", *_sft_args(corpus_lm, out, "--max_steps", "4"))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert len(_losses(out)) == 4
    _check_adapter(out, corpus_lm)


def test_capo_resume_continues_exactly(sft_run, corpus_lm, tmp_path):
    """A killed CAPO run (SFT start, frozen "ref" adapter) resumed from its checkpoint ends as if never stopped."""
    out = tmp_path / "capo"
    args = [str(a) for a in ("--model_name_or_path", corpus_lm, "--output_dir", out, "--annotator", "A2", *FAST,
                             "--sft_adapter", sft_run, "--max_train_rows", "8", "--max_eval_rows", "4",
                             "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--max_steps", "4",
                             "--save_strategy", "steps", "--save_steps", "2")]
    capo = load_script("recipes/capo.py")
    capo.main(args)
    reference = _losses(out)
    for path in out.iterdir():
        if path.name != "checkpoint-2":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    capo.main(args + ["--resume_from_checkpoint", "true"])
    assert _losses(out) == pytest.approx(reference, abs=1e-6) and len(reference) == 4
    assert json.loads((out / "run_manifest.json").read_text())["init_from"] == "sft"


def test_training_options_are_checked_on_the_model_skeleton_before_anything_loads(tmp_path):
    """A batch size of 0, max_steps below 1 (but -1: train by epochs), a negative few_shot and LoRA target modules
    the model lacks are one-line errors; a config without weights is enough (the check uses a meta-device skeleton),
    and the parsed arguments, which the run manifest records, stay as given."""
    from test_errors import TINY_LLAMA

    from capo.errors import DataError
    from capo.train.explainers import check_training_options

    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    parse = load_script("recipes/sft.py").parse

    def check(*extra: str):
        _, capo_args, training_args, model_args = parse(["--model_name_or_path", str(tmp_path), "--output_dir",
                                                         str(tmp_path / "out"), "--use_cpu", "true", *extra])
        check_training_options(capo_args, training_args, model_args)
        return model_args

    assert check("--max_steps", "-1").lora_target_modules is None  # by epochs, all-linear: nothing changed
    assert check("--lora_target_modules", "q_proj", "v_proj").use_peft is False  # names ending module names
    check("--lora_target_modules", ".*q_proj", "--max_steps", "3")  # one name: a regular expression
    for extra, pattern in [
        (["--per_device_eval_batch_size", "0"], r"^field 'per_device_eval_batch_size': must be a whole number"),
        (["--gradient_accumulation_steps", "0"], r"^field 'gradient_accumulation_steps': must be a whole number"),
        (["--max_steps", "0"], r"^field 'max_steps': must be a whole number of at least 1, or -1 to train for "),
        (["--num_train_epochs", "0"], r"^field 'num_train_epochs': must be more than 0 when max_steps is -1"),
        (["--few_shot", "-2"], r"^field 'few_shot': must be a whole number of at least 0, got -2$"),
        (["--lora_target_modules", "q_proj"],
         r"^field 'lora_target_modules': 'q_proj' matches no module of \S+ \(a single name is a regular expression"),
        (["--lora_target_modules", "input_layernorm", "q_proj"],
         r"^field 'lora_target_modules': Target module LlamaRMSNorm\(.*\) is not supported"),
    ]:
        with pytest.raises(DataError, match=pattern):
            check(*extra)
