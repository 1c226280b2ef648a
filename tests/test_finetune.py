"""Soft-label fine-tuning: loss, metric naming, checkpoint selection, training, resume after a kill, run signatures,
loaders, errors, tables."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, call_script, write_jsonl

from capo.data.distributions import read_distributions
from capo.data.formats.mjd_files import load_nli341
from capo.errors import DataError
from capo.evaluate.finetune.arguments import FinetuneArguments, default_model_path, parse_arguments
from capo.evaluate.finetune.comparison import aggregate, beats_constants, format_csv, format_markdown
from capo.evaluate.finetune.data import (
    chaosnli_examples,
    load_nli_hard_labels,
    select_subset,
    to_dataset,
    training_distributions,
    training_examples,
)
from capo.evaluate.finetune.scoring import METRICS, compute_metrics, constant_scores, score
from capo.evaluate.finetune.trainer import (
    SIGNATURE_FILE,
    SoftLabelTrainer,
    finetune,
    soft_cross_entropy,
)
from capo.io import last_complete_checkpoint

# --- loss and metrics ------------------------------------------------------------------------------------------


def test_soft_cross_entropy_matches_a_hand_computation():
    import torch
    from transformers import EvalPrediction

    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]
    targets = [[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]]
    by_hand = []
    for z, p in zip(logits, targets):
        log_norm = math.log(sum(math.exp(v) for v in z))
        by_hand.append(-sum(pk * (zk - log_norm) for zk, pk in zip(z, p)))
    # row 2: uniform prediction, one-hot target -> ln 3
    assert by_hand[1] == pytest.approx(math.log(3))
    loss = soft_cross_entropy(torch.tensor(logits), torch.tensor(targets))
    assert loss.item() == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    # The dev metric the Trainer reports is the same quantity as the training loss.
    metrics = compute_metrics(EvalPrediction(predictions=np.array(logits), label_ids=np.array(targets)))
    assert metrics["soft_ce"] == pytest.approx(sum(by_hand) / 2, abs=1e-6)


@pytest.mark.filterwarnings("ignore:reduction:UserWarning")  # torch warns that "mean" is not true KL
def test_kl_and_kl_torch_mean_are_reported_under_their_own_names():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    human, model = rng.dirichlet([2, 2, 2], size=20), rng.dirichlet([1, 3, 2], size=20)
    report = score(human, model)
    per_item_kl = np.mean([sum(h * np.log(h / m)) for h, m in zip(human, model)])
    assert report["kl"] == pytest.approx(per_item_kl, rel=1e-6)
    assert report["kl_torch_mean"] == pytest.approx(per_item_kl / 3, rel=1e-6)
    h, log_m = torch.tensor(human), torch.tensor(model).log()
    # What the papers' code printed as "KL" is kl_div(reduction="mean") = KL / 3; the true KL is "batchmean".
    assert F.kl_div(log_m, h, reduction="mean").item() == pytest.approx(report["kl_torch_mean"], rel=1e-6)
    assert F.kl_div(log_m, h, reduction="batchmean").item() == pytest.approx(report["kl"], rel=1e-6)
    assert set(METRICS) <= set(report)


def test_constant_predictors_score_uniform_and_the_training_mean():
    train = training_examples("mnli_onehot")
    test = chaosnli_examples("test")
    constants = constant_scores(train, test)
    human = np.array([e.distribution for e in test])
    assert constants["uniform"]["soft_ce"] == pytest.approx(math.log(3))
    mean = np.mean([e.distribution for e in train], axis=0)
    expected_kl = np.mean(np.sum(human * np.log(np.clip(human, 1e-10, 1) / mean), axis=1))
    assert constants["train_mean"]["kl"] == pytest.approx(expected_kl, rel=1e-4)


# --- data --------------------------------------------------------------------------------------------------------


def test_training_sources_cover_the_341_items():
    items = load_nli341()
    for source in ("chaosnli", "varierr_dist", "mnli_dist", "mnli_onehot"):
        dists = training_distributions(source, items)
        assert set(dists) == {i.id for i in items}
        assert all(abs(sum(d) - 1) < 1e-6 for d in dists.values())
    assert all(max(d) == 1.0 for d in training_distributions("mnli_onehot", items).values())
    assert len(chaosnli_examples("dev")) == len(chaosnli_examples("test")) == 629
    assert select_subset(chaosnli_examples("dev"), 50) == select_subset(chaosnli_examples("dev"), 50)
    assert len(select_subset(chaosnli_examples("dev"), 50)) == 50


def test_mjd_file_as_source_and_its_errors(tmp_path):
    items = load_nli341()
    rows = [{"id": i.id, "distribution": [0.2, 0.5, 0.3]} for i in items]
    good = write_jsonl(tmp_path / "mjd.jsonl", rows)
    assert training_distributions(str(good), items)[items[0].id] == pytest.approx([0.2, 0.5, 0.3])

    not_summing = write_jsonl(tmp_path / "bad_sum.jsonl", rows[:5] + [{"id": items[5].id, "distribution": [0.2, 0.2, 0.2]}])
    with pytest.raises(DataError) as err:
        training_distributions(str(not_summing), items)
    message = str(err.value)
    assert "\n" not in message
    assert f"{not_summing}:6" in message and items[5].id in message and "'distribution'" in message
    assert "sums to 0.6" in message

    missing = write_jsonl(tmp_path / "missing.jsonl", rows[1:])
    with pytest.raises(DataError, match=r"ids do not match the 341 training items: 1 missing, 0 unknown"):
        training_distributions(str(missing), items)


def test_cli_rejects_a_distribution_file_whose_ids_do_not_match(tmp_path):
    items = load_nli341()
    rows = [{"id": i.id, "distribution": [0.2, 0.5, 0.3]} for i in items[:-1]] + [
        {"id": "not-an-item", "distribution": [1, 0, 0]}
    ]
    path = write_jsonl(tmp_path / "mjd.jsonl", rows)
    out = tmp_path / "out"
    done = call_script("recipes/finetune.py", "--source", path, "--output_dir", out, "--use_cpu", "true")
    assert done.returncode == 2
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, done.stderr
    assert str(path) in error_lines[0] and "ids do not match" in error_lines[0] and "'not-an-item'" in error_lines[0]
    assert not out.exists()  # nothing written for bad input


def test_anli_format_loader(tmp_path):
    rows = [
        {"uid": "r1-1", "premise": "A man plays a guitar.", "hypothesis": "A man makes music.", "label": "e",
         "reason": "", "tag": "x"},
        {"uid": "r1-2", "premise": "A dog sleeps.", "hypothesis": "A cat sleeps.", "label": "c", "reason": ""},
        {"uid": "r1-3", "premise": "She left early.", "hypothesis": "She was tired.", "label": "n"},
    ]
    examples = load_nli_hard_labels(write_jsonl(tmp_path / "test.jsonl", rows))
    assert [e.id for e in examples] == ["r1-1", "r1-2", "r1-3"]
    assert [e.distribution for e in examples] == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert examples[1].hypothesis == "A cat sleeps."

    bad = write_jsonl(tmp_path / "bad.jsonl", rows[:2] + [{**rows[2], "label": "maybe"}])
    with pytest.raises(DataError) as err:
        load_nli_hard_labels(bad)
    assert f"{bad}:3" in str(err.value) and "item r1-3" in str(err.value) and "field 'label'" in str(err.value)
    no_text = write_jsonl(tmp_path / "no_text.jsonl", [{"uid": "x", "premise": "p", "label": "e"}])
    with pytest.raises(DataError, match="field 'hypothesis / sentence2'"):
        load_nli_hard_labels(no_text)

    # MNLI-style rows are read too; rows without a gold majority ("-") are skipped.
    mnli = write_jsonl(tmp_path / "mnli.jsonl", [
        {"pairID": "1e", "sentence1": "p", "sentence2": "h", "gold_label": "neutral"},
        {"pairID": "2n", "sentence1": "p", "sentence2": "h", "gold_label": "-"},
    ])
    assert [(e.id, e.distribution) for e in load_nli_hard_labels(mnli)] == [("1e", [0.0, 1.0, 0.0])]


# --- training ----------------------------------------------------------------------------------------------------


def _cpu_args(output_dir, **overrides):
    from transformers import TrainingArguments

    settings = {"output_dir": str(output_dir), "use_cpu": True, "bf16": False, "activation_checkpointing": False,
                "report_to": "none", "seed": 0, "dataloader_pin_memory": False, "disable_tqdm": True}
    return TrainingArguments(**(settings | overrides))


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A 2-layer BERT with MiniLM's tokenizer, saved like any checkpoint: same `from_pretrained` path as a hub id."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_soft_label_training_lowers_the_loss_on_a_handful_of_items(tmp_path):
    """The real pretrained MiniLM, 8 items, 2 steps: the soft CE on those items must fall (by 0.21-0.36 over seeds
    0-2 when written; the bar is 0.1)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        set_seed,
    )

    set_seed(0)
    examples = training_examples("chaosnli")[:8]
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=3)
    data = to_dataset(examples, tokenizer, 64)
    trainer = SoftLabelTrainer(
        model=model,
        args=_cpu_args(tmp_path, max_steps=2, per_device_train_batch_size=8, learning_rate=1e-3,
                       save_strategy="no", logging_steps=1),
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    before = trainer.evaluate(data)["eval_loss"]
    trainer.train()
    after = trainer.evaluate(data)["eval_loss"]
    assert before == pytest.approx(1.1, abs=0.15)  # a fresh 3-way head predicts close to uniform
    assert after < before - 0.1, (before, after)


@pytest.mark.slow
def test_best_checkpoint_is_selected_by_dev_macro_f1_and_test_scored_once(tmp_path, tiny_encoder):
    anli = write_jsonl(tmp_path / "anli.jsonl", [
        {"uid": "a", "premise": "A man plays a guitar.", "hypothesis": "A man makes music.", "label": "e"},
        {"uid": "b", "premise": "A dog sleeps.", "hypothesis": "A cat sleeps.", "label": "c"},
    ])
    out = tmp_path / "run"
    args = _cpu_args(out, max_steps=10, per_device_train_batch_size=32, per_device_eval_batch_size=128,
                     learning_rate=1e-1, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                     save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="macro_f1",
                     greater_is_better=True, logging_steps=2)
    metrics = finetune(FinetuneArguments(source="chaosnli", model_name_or_path=tiny_encoder, max_length=64,
                                         ood_test_file=str(anli)), args, log=lambda *_: None)

    evals = [(row["step"], row["eval_macro_f1"]) for row in metrics_history(out) if "eval_macro_f1" in row]
    assert [s for s, _ in evals] == [2, 4, 6, 8, 10]
    scores = [f1 for _, f1 in evals]
    assert len(set(scores)) > 1, "dev macro-F1 must vary across checkpoints for this test to mean anything"
    best_step = evals[int(np.argmax(scores))][0]  # the first of ties, as Trainer keeps it
    assert metrics["best_step"] == best_step
    # (on the machine this was written on the best is step 4 of 10: keeping the last checkpoint would fail here)
    # Selection used the full dev set here, so the reported dev score is that checkpoint's, re-scored.
    assert metrics["dev"]["macro_f1"] == pytest.approx(max(scores), abs=1e-6)
    assert metrics["n_selection_dev"] == 629 and metrics["global_step"] == 10
    assert set(METRICS) <= set(metrics["test"]) and metrics["ood"]["file"] == str(anli)
    assert metrics["constants"]["test"]["uniform"]["soft_ce"] == pytest.approx(math.log(3))
    for name in ("metrics.json", "run_manifest.json", "training_curves.png", "predictions_test.jsonl"):
        assert (out / name).stat().st_size > 0
    assert len(read_distributions(out / "predictions_test.jsonl")) == 629

    # The saved best_model is the selected one: scoring it alone (the out-of-distribution path) gives the same numbers.
    rescored = finetune(FinetuneArguments(source="chaosnli", model_name_or_path=str(out / "best_model"), max_length=64,
                                          ood_test_file=str(anli), eval_only=True),
                        _cpu_args(tmp_path / "rescore", per_device_eval_batch_size=128), log=lambda *_: None)
    assert rescored["eval_only"] and rescored["global_step"] == 0
    assert rescored["dev"]["macro_f1"] == pytest.approx(max(scores), abs=1e-6)
    assert rescored["test"] == pytest.approx(metrics["test"]) and rescored["ood"] == pytest.approx(metrics["ood"])


def metrics_history(out):
    return json.loads((out / "log_history.json").read_text())


# --- comparison table --------------------------------------------------------------------------------------------


def _run(source, seed, kl, f1, const_kl=0.30, const_f1=0.2):
    def row(k, f):
        return {m: 0.5 for m in METRICS} | {"kl": k, "macro_f1": f}

    constants = {"uniform": row(0.36, 0.21), "train_mean": row(const_kl, const_f1)}
    return {"source": source, "seed": seed, "dev": row(kl, f1), "test": row(kl, f1),
            "constants": {"dev": constants, "test": constants}}


def test_comparison_table_says_when_no_source_beats_the_constants():
    runs = [_run("chaosnli", 0, 0.33, 0.40), _run("chaosnli", 1, 0.35, 0.30),
            _run("mnli_onehot", 0, 0.40, 0.25), _run("mnli_onehot", 1, 0.42, 0.27, const_kl=0.32)]
    table = aggregate(runs)
    assert list(table) == ["chaosnli", "mnli_onehot", "uniform", "train_mean[chaosnli]", "train_mean[mnli_onehot]"]
    mean, sd, n = table["chaosnli"]["test"]["kl"]
    assert (mean, n) == (pytest.approx(0.34), 2) and sd == pytest.approx(np.std([0.33, 0.35], ddof=1))
    assert table["uniform"]["test"]["kl"][2] == 1  # constants are counted once, not once per seed
    assert beats_constants(table, "test", "kl") == {"chaosnli": False, "mnli_onehot": False}
    assert beats_constants(table, "test", "macro_f1") == {"chaosnli": True, "mnli_onehot": True}
    markdown = format_markdown(table)
    assert ("On test kl, the best constant predictor is train_mean[chaosnli] (0.3000); NO trained source beats it."
            in markdown)
    assert "| train_mean[chaosnli] (constant) | 1 |" in markdown and "0.3400 ± 0.0141" in markdown
    csv_text = format_csv(table)
    assert csv_text.splitlines()[0].startswith("source,constant,split,n,accuracy_mean,accuracy_sd")
    assert len(csv_text.splitlines()) == 1 + 5 * 2

    better = aggregate([_run("chaosnli", 0, 0.20, 0.40), _run("chaosnli", 1, 0.22, 0.40)])
    assert "On test kl, the best constant predictor is train_mean[chaosnli] (0.3000); beating it: chaosnli (by 0.0900, " \
        "sd over seeds 0.0141)." in format_markdown(better)

    # A source judged alone still faces the ChaosNLI training mean, not only its own training mean.
    reference = {split: {m: 0.5 for m in METRICS} | {"kl": 0.25, "macro_f1": 0.2} for split in ("dev", "test")}
    alone = aggregate([_run("mjd", 0, 0.29, 0.3, const_kl=0.295)], reference=reference)
    assert "train_mean[chaosnli]" in alone and "train_mean[mjd]" in alone
    assert beats_constants(alone, "test", "kl") == {"mjd": False}
    assert aggregate(runs, reference=reference)["train_mean[chaosnli]"]["test"]["kl"][0] == pytest.approx(0.30)


def test_compare_rejects_an_unknown_source_in_one_line(tmp_path):
    done = call_script("eval/finetune_compare.py", "--sources", "chaosnli,no_such_source", "--output_dir", tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no_such_source" in done.stderr
    assert "not a file and not a known source" in done.stderr
    assert not (tmp_path / "comparison.md").exists()


# --- resume after a kill, run signatures ---------------------------------------------------------------------------

# A child process that trains like `recipes/finetune.py` but SIGKILLs itself right after checkpoint-2 is saved: the
# folder is left as a real kill leaves it (no best_model, no metrics.json, nothing flushed at exit).
KILL_AFTER_STEP_2 = """
import os, signal, sys
from transformers import TrainerCallback
from capo.evaluate.finetune.arguments import parse_arguments
from capo.evaluate.finetune.trainer import finetune

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

finetune(*parse_arguments(sys.argv[1:]), callbacks=[KillAfterSave()])
"""


class StepCounter:
    """A TrainerCallback (duck-typed: Trainer calls only the hooks it defines) counting the optimizer steps taken."""

    def __init__(self):
        self.steps = 0

    def __getattr__(self, name):  # every other hook: do nothing
        return lambda *args, **kwargs: None

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def _tiny_config(tmp_path, tiny_encoder, hard_labels):
    """4 steps of 64 items, a checkpoint and a dev evaluation (16 items) every 2 steps, after a 1-epoch first stage."""
    settings = {
        "model_name_or_path": tiny_encoder, "max_length": 32, "selection_dev_size": 16,
        "first_stage_file": str(hard_labels), "first_stage_epochs": 1, "learning_rate": 1e-3,
        "per_device_train_batch_size": 64, "per_device_eval_batch_size": 256, "max_steps": 4,
        "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps", "save_steps": 2, "save_total_limit": 1,
        "load_best_model_at_end": True, "metric_for_best_model": "macro_f1", "greater_is_better": True,
        "logging_steps": 1, "report_to": "none", "use_cpu": True, "bf16": False, "dataloader_pin_memory": False,
        "disable_tqdm": True,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def _losses(out):
    return [(row["step"], row["loss"]) for row in json.loads((out / "log_history.json").read_text()) if "loss" in row]


@pytest.mark.slow
@pytest.mark.heavy
def test_run_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path, tiny_encoder):
    hard = write_jsonl(tmp_path / "nli.jsonl", [
        {"pairID": str(k), "sentence1": f"premise {k}", "sentence2": f"hypothesis {k}", "gold_label": label}
        for k, label in enumerate(["entailment", "neutral", "contradiction", "-"] * 4)
    ])
    config = _tiny_config(tmp_path, tiny_encoder, hard)
    # The uninterrupted run sits where eval/finetune_compare.py puts seed 0 of varierr_dist (reused below).
    compare_dir = tmp_path / "compare"
    whole_dir, killed_dir = compare_dir / "varierr_dist" / "seed0", tmp_path / "killed"

    def argv(out, *extra):
        return ["--config", str(config), "--source", "varierr_dist", "--seed", "0", "--output_dir", str(out), *extra]

    logged: list[str] = []
    whole = finetune(*parse_arguments(argv(whole_dir)), log=logged.append)
    assert any("first stage: 12 hard-label pairs" in line for line in logged)
    assert whole["global_step"] == 4 and whole["best_step"] in (2, 4)

    child = subprocess.run([sys.executable, "-c", KILL_AFTER_STEP_2, *argv(killed_dir)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert last_complete_checkpoint(killed_dir) == str(killed_dir / "checkpoint-2")
    assert (killed_dir / "first_stage" / "final" / "config.json").exists()
    assert not (killed_dir / "metrics.json").exists() and not (killed_dir / "best_model").exists()

    # Restarted with the same command: the first stage is loaded, training continues at step 3 and takes only the
    # two remaining steps (a fresh start with the same seed would also match, but would take four).
    logged.clear()
    counter = StepCounter()
    resumed = finetune(*parse_arguments(argv(killed_dir)), log=logged.append, callbacks=[counter])
    assert any("first stage already done" in line for line in logged)
    assert f"resuming from {killed_dir / 'checkpoint-2'}" in logged
    assert counter.steps == 2 and resumed["global_step"] == 4
    assert resumed["best_step"] == whole["best_step"]
    assert resumed["best_selection_value"] == pytest.approx(whole["best_selection_value"])
    assert resumed["dev"] == pytest.approx(whole["dev"], abs=1e-6)
    assert resumed["test"] == pytest.approx(whole["test"], abs=1e-6)
    (steps, losses), (whole_steps, whole_losses) = zip(*_losses(killed_dir)), zip(*_losses(whole_dir))
    assert steps == whole_steps == (1, 2, 3, 4) and losses == pytest.approx(whole_losses, abs=1e-6)

    # Other settings in the same folder are refused in one line, before anything is loaded or written.
    before = (killed_dir / "metrics.json").read_bytes()
    with pytest.raises(DataError) as err:
        finetune(*parse_arguments(argv(killed_dir, "--learning_rate", "0.5")), log=logged.append)
    message = str(err.value)
    assert "\n" not in message and "field 'learning_rate'" in message and "0.001 there, 0.5 now" in message
    assert (killed_dir / "metrics.json").read_bytes() == before

    # eval/finetune_compare.py reuses the finished run whose signature matches (no new run: no log.txt) ...
    done = call_script("eval/finetune_compare.py", "--sources", "varierr_dist", "--seeds", "1", "--config", config,
                      "--output_dir", compare_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((compare_dir / "runs.json").read_text()) == [json.loads((whole_dir / "metrics.json").read_text())]
    assert not (whole_dir / "log.txt").exists()
    # ... and refuses it, in one line and before any run starts, when a setting passed to the runs differs.
    done = call_script("eval/finetune_compare.py", "--sources", "varierr_dist", "--seeds", "1", "--config", config,
                      "--output_dir", compare_dir, "--max_steps", "6")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "field 'max_steps'" in done.stderr and str(whole_dir) in done.stderr
    assert not (whole_dir / "log.txt").exists()

    # Same settings, but the first-stage file's content changed: refused too (the signature hashes the data).
    write_jsonl(hard, [{"pairID": "0", "sentence1": "other", "sentence2": "text", "gold_label": "neutral"}])
    with pytest.raises(DataError, match="field 'first_stage_sha256'"):
        finetune(*parse_arguments(argv(killed_dir)), log=logged.append)


def test_checkpoints_without_a_signature_are_not_resumed(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-20").mkdir(parents=True)
    done = call_script("recipes/finetune.py", "--source", "chaosnli", "--output_dir", out, "--use_cpu", "true")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "holds run output (checkpoint-20) but no run_signature.json" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-20"] and not (out / SIGNATURE_FILE).exists()
