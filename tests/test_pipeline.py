"""recipes/pipeline.py on the tiny corpus LM: a real end-to-end run and its report (the explainer jury and the
LeWiDi explainer predictors included); the LeWiDi explainers' run and skip paths; stage caching (a second run skips
every stage and leaves the report as it was); the command each evaluation stage quotes, run on its own,
writes that stage's file again; --from; a changed key re-running only the stages it shapes; a real
SIGKILL mid-training and another mid-generation, then a resume that ends where an uninterrupted run does; bad input
as one located line that leaves no stage.json behind; `--status` reads where a run stands and runs nothing.

Every run uses the relative output folder `run` inside its own working folder, so a copied run folder (and a fresh
run with the same config) holds byte-identical paths and can be compared with the first run file for file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT, load_script, run_script

from capo.pipeline.cache import PENDING_FILE, STAGE_FILE
from capo.runner import KILL_AFTER_ENV

pytestmark = pytest.mark.slow

STAGES = ["data", "sft", "capo", "generation", "attribution", "imitation", "variability", "mjd", "distributions",
          "jury", "lewidi_explainers", "lewidi", "report"]
EVALUATION = ["attribution", "imitation", "variability", "mjd", "distributions", "jury", "lewidi_explainers",
              "lewidi"]


def _write_config(folder: Path, corpus_lm: Path) -> Path:
    """A tiny study on the corpus LM: A1 and A2, 2 SFT steps and 1 CAPO step, 3 held-out items, 20 MJD items, the
    jury, and LeWiDi explainers (the base model only: nli trains on VariErr, no paraphrase explainers)."""
    configs = ROOT / "recipes" / "configs"
    lines = [
        "output_dir: run",
        f"model: {corpus_lm}",
        "dtype: float32",
        "tasks: [nli]",
        "annotators: [A1, A2]",
        "seeds: [0]",
        f"sft_config: {configs / 'sft_corpus_lm.yaml'}",
        ("sft_args: [max_steps=2, warmup_steps=0, logging_steps=1, save_steps=1, eval_strategy=no, max_train_rows=16,"
         " max_eval_rows=8, max_length=256, per_device_train_batch_size=4, lora_r=8, lora_alpha=16]"),
        f"capo_config: {configs / 'capo_tiny.yaml'}",
        ("capo_args: [max_steps=1, warmup_steps=0, logging_steps=1, save_steps=1, eval_strategy=no, eval_split=none,"
         " max_train_rows=8, max_length=256, per_device_train_batch_size=4, bf16=false, lora_r=8, lora_alpha=16]"),
        "generate_limit: 3",
        "generate_max_new_tokens: 16",
        "generate_shard_size: 2",
        "attribution_splits: [dev]",
        "imitation_ks: [1, 2]",
        "embeddings: false",
        f"mjd_runs: [none={configs / 'mjd_tiny_none.yaml'}]",
        "mjd_args: [limit=20, dtype=float32, items_per_chunk=10, batch_size=16]",
        "lewidi_datasets: [ven, par]",
        "jury: true",
        "lewidi_explainers: true",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextmanager
def _inside(folder: Path):
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def _run(folder: Path, *argv: str) -> dict[str, str]:
    """Run the pipeline in this process from `folder`; stage -> status (ran / resumed / cached)."""
    with _inside(folder):
        rows = load_script("recipes/pipeline.py").main(["--config", "pipeline.yaml", *argv])
    return {row["stage"]: row["status"] for row in rows}


def _fails(folder: Path, capsys, *argv: str) -> str:
    capsys.readouterr()
    with _inside(folder), pytest.raises(SystemExit) as exit_info:
        load_script("recipes/pipeline.py").main(["--config", "pipeline.yaml", *argv])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def _copy(first: Path, to: Path) -> Path:
    shutil.copytree(first / "run", to / "run")
    shutil.copy(first / "pipeline.yaml", to / "pipeline.yaml")
    return to


def _results(folder: Path) -> dict:
    return json.loads((folder / "run" / "report" / "results.json").read_text())


def _stage_files(folder: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in (folder / "run").glob(f"*/{STAGE_FILE}")}


@pytest.fixture(scope="module")
def first(corpus_lm, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("first")
    _write_config(folder, corpus_lm)
    statuses = _run(folder)
    assert statuses == dict.fromkeys(STAGES, "ran")
    return folder


def test_end_to_end_writes_every_stage_and_a_report_with_tables_and_plots(first):
    run = first / "run"
    for stage in STAGES:
        record = json.loads((run / stage / STAGE_FILE).read_text())
        assert record["stage"] == stage and len(record["signature"]) == 16 and record["wall_seconds"] > 0
        assert not (run / stage / PENDING_FILE).exists()
    report = (run / "report" / "report.md").read_text()
    for heading in ("## Data", "## Explainers", "## Generation", "## Likelihood attribution", "## Judges",
                    "## Explanation variability", "## Model judgment distributions", "**Calibration**",
                    "## LeWiDi 2025", "## Manifests"):
        assert heading in report, heading
    captions = [line for line in report.splitlines() if line.startswith("_Stage `")]
    assert len(captions) >= 9
    assert all(all(part in c for part in ("command: `python ", "model ", "seed(s) ", "wall time ")) for c in captions)
    images = [line[line.index("](") + 2 : -1] for line in report.splitlines() if line.startswith("![")]
    assert len(images) >= 4 and {"training_loss.png", "ternary.png", "lewidi.png"} <= set(images)
    assert any(i.startswith("confusion_") for i in images) and any(i.startswith("imitation_k_") for i in images)
    for image in images:
        assert (run / "report" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for manifest in ("sft__stage.json", "sft__seed0__nli__A1__run_manifest.json", "mjd__none__run_manifest.json"):
        assert (run / "report" / "manifests" / manifest).is_file()
    results = _results(first)
    assert [(a["annotator"], a["steps"]) for a in results["sft"]["adapters"]] == [("A1", 2), ("A2", 2)]
    assert [(r["run"], r["records"]) for r in results["generation"]] == [("capo_s0", 6), ("base", 3)]
    assert set(results["attribution"]["nli"]["annotators"]) == {"A1", "A2"}
    assert results["imitation"]["nli_trained"]["human_heldout"]["n"] > 100
    assert {"human", "capo_s0", "base"} <= set(results["variability"]["nli"])
    assert {"uniform", "mjd none", "mjd none calibrated"} <= set(results["distributions"])
    assert results["distributions"]["mjd none"]["items"] == 20
    # The published most-frequent-label VEN test score: the LeWiDi stage runs the shared task's scorer.
    ven_test = next(r for r in results["lewidi"] if (r["dataset"], r["split"], r["predictor"]) ==
                    ("ven", "test", "most_frequent"))
    assert round(ven_test["perspectivist"], 3) == 0.345
    # The jury: the base model and each explainer kind, with the items its explainers trained on counted and left
    # out of a held-out-only row.
    jury = results["jury"]
    assert {"jury base", "jury sft s0", "jury capo s0"} <= set(jury)
    assert jury["jury base"]["items"] == 341 and jury["jury base"]["in_training"] == 0
    trained = jury["jury capo s0"]["in_training"]
    assert 0 < trained < 341 and jury["jury capo s0 held-out only"]["items"] == 341 - trained
    assert all(0 <= row["kl"] and 0 <= row["jsd"] <= 1 for row in jury.values())
    assert "| jury capo s0 held-out only | " + str(341 - trained) + " | 0 |" in report
    # LeWiDi: the base model beside the constants; the explainers skipped, each data set with its reason.
    lewidi = results["lewidi_explainers"]
    assert [(r["dataset"], r["split"], r["predictor"]) for r in lewidi["rows"]] == \
        [("ven", "dev", "base"), ("ven", "test", "base"), ("par", "dev", "base")]
    assert "holds 78 of the 100 VEN dev/test items" in lewidi["skipped"]["ven"]
    assert "no paraphrase explainers" in lewidi["skipped"]["par"]
    assert "**VEN: explainers not scored**" in report and "| ven | test | base | 50 |" in report
    # LeWiDi dev rows are scored cross-fitted, test rows with the decision fitted on all of dev; the imitation
    # tables say how many items each generated set and its human ceiling rest on
    assert [r["decision_fit"] for r in lewidi["rows"]] == ["cross-fitted over 5 folds of dev", "fitted on all of dev",
                                                          "cross-fitted over 5 folds of dev"]
    assert "| ven | dev | base | 50 |" in report and "cross-fitted over 5 folds of dev: " in report
    assert "items (generated / ceiling)" in report
    nli = results["imitation"]["nli_trained"]
    assert all(row["basis"]["generated"]["items"] == row["basis"]["human_ceiling"]["items"]
               for per in nli["sources"].values() for row in per.values() if "basis" in row)


def test_lewidi_explainers_score_explainers_trained_on_lewidi_and_say_why_not_otherwise(corpus_lm, tmp_path,
                                                                                      monkeypatch):
    """The explainers' run path, which the tiny study cannot reach (its nli explainers train on VariErr, for A1 and
    A2): SFT and CAPO adapters of all four annotators (random LoRA, their manifests: LeWiDi VEN train) in the
    pipeline's layout, scored on VEN beside the base model with nli_dataset lewidi-ven; the skip reasons else."""
    from conftest import make_adapter

    from capo.data.datasets import load_task_data
    from capo.data.heldout import training_record
    from capo.io import write_json
    from capo.pipeline.arguments import parse
    from capo.pipeline.cache import Context
    from capo.pipeline.stages.lewidi import explainers_skipped, run_lewidi_explainers

    monkeypatch.chdir(ROOT)

    def arguments(nli_dataset: str, annotators=("A1", "A2", "A3", "A4")):
        return parse(["--model", str(corpus_lm), "--dtype", "float32", "--annotators", *annotators,
                      "--conditioned", "true", "--nli_dataset", nli_dataset, "--lewidi_datasets", "ven",
                      "--lewidi_explainers", "true"])

    args = arguments("lewidi-ven")
    ven = load_task_data("nli", "lewidi-ven")
    train = [item.id for item in ven.items("train")]
    for k, (kind, annotator) in enumerate([*((kind, a) for kind in ("sft", "capo") for a in args.annotators),
                                           ("capo", "all")]):
        folder = make_adapter(corpus_lm, tmp_path / kind / "seed0" / "nli" / annotator, seed=k)
        write_json(folder / "run_manifest.json", {"training_data": training_record(ven, annotator, train)})
    summary = run_lewidi_explainers(Context(args, tmp_path, log=lambda *_: None))
    assert summary["skipped"] == {}
    rows = {(r["split"], r["predictor"]): r for r in summary["rows"]}
    assert set(rows) == {(split, p) for split in ("dev", "test") for p in ("base", "sft s0", "capo s0", "cond s0")}
    assert all(r["items"] == 50 and 0 <= r["perspectivist"] <= 1 for r in rows.values())
    # dev rows: each item fold with the decision fitted on the other folds; test rows: the one fitted on all of dev
    assert all(r["decision_fit"] == ("cross-fitted over 5 folds of dev" if r["split"] == "dev" else
                                     "fitted on all of dev") and ("fold_decisions" in r) == (r["split"] == "dev")
               for r in rows.values())
    assert len({rows["test", p]["soft_mean"] for p in ("base", "sft s0", "capo s0", "cond s0")}) == 4
    assert "--explainers '" + str(tmp_path / "capo" / "seed0" / "{task}" / "{annotator}") + "'" in \
        summary["commands"][-2]
    assert "--explainers '" + str(tmp_path / "capo" / "seed0" / "{task}" / "all") + "'" in summary["commands"][-1]
    probs = tmp_path / "lewidi_explainers" / "ven_test_capo_s0_probs.jsonl"
    assert len(probs.read_text().splitlines()) == 192

    assert "holds 78 of the 100 VEN dev/test items" in explainers_skipped(arguments("varierr"), "ven")
    assert "A3 A4 annotate VEN but have no explainer" in explainers_skipped(arguments("lewidi-ven", ("A1", "A2")),
                                                                           "ven")


def test_second_run_skips_every_stage_and_keeps_the_report(first):
    before = {p: p.read_bytes() for p in (first / "run").rglob("*") if p.is_file()}
    assert _run(first) == dict.fromkeys(STAGES, "cached")
    after = {p: p.read_bytes() for p in (first / "run").rglob("*") if p.is_file()}
    assert after == before


def test_status_says_every_stage_finished_and_runs_nothing(first, capsys):
    before = {p: p.read_bytes() for p in (first / "run").rglob("*") if p.is_file()}
    capsys.readouterr()
    with _inside(first):
        rows = load_script("recipes/pipeline.py").main(["--config", "pipeline.yaml", "--status"])
    assert {r["stage"]: r["state"] for r in rows} == dict.fromkeys(STAGES, "finished")
    assert all(r["attempts"] == 1 and r["wall_seconds"] >= 0 for r in rows)
    assert f"{len(STAGES)} of {len(STAGES)} stages finished" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (first / "run").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("stage,script", [("imitation", "eval/imitation.py"), ("attribution", "eval/attribution.py"),
                                          ("variability", "eval/variability.py"), ("mjd", "eval/calibrate.py"),
                                          ("distributions", "eval/distributions.py")])
def test_a_quoted_evaluation_command_writes_what_its_stage_wrote(first, tmp_path, stage, script):
    """The command a stage quotes is the job it ran: run as a user would, from the run's folder (its paths are
    relative to it) and into a new output file, it writes the stage's file again, number for number."""
    import shlex

    from conftest import call_script

    commands = json.loads((first / "run" / stage / STAGE_FILE).read_text())["summary"]["commands"]
    words = shlex.split(next(c for c in commands if shlex.split(c)[1] == script))  # the mjd stage runs two scripts
    assert words[:2] == ["python", script]
    argv = words[2:]
    written = {}
    for flag in ("--output", "--human_output", "--report"):  # every file the job writes goes to the new folder
        if flag in argv:
            k = argv.index(flag) + 1
            written[first / argv[k]], argv[k] = tmp_path / Path(argv[k]).name, str(tmp_path / Path(argv[k]).name)
    with _inside(first):
        result = call_script(script, *argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert written
    for original, again in written.items():
        read = json.loads if original.suffix == ".json" else str
        assert read(again.read_text()) == read(original.read_text()), original.name


def test_from_reruns_that_stage_and_every_later_one(first, tmp_path):
    copy = _copy(first, tmp_path)
    statuses = _run(copy, "--from", "lewidi_explainers")  # the LeWiDi explainers' scores are reproducible too
    later = STAGES.index("lewidi_explainers")
    assert statuses == {**dict.fromkeys(STAGES[:later], "cached"), **dict.fromkeys(STAGES[later:], "ran")}
    assert _results(copy) == _results(first)


def test_a_changed_key_reruns_only_the_stages_whose_signature_it_changes(first, tmp_path):
    copy = _copy(first, tmp_path)
    statuses = _run(copy, "--mjd_args", "limit=12", "dtype=float32", "items_per_chunk=10", "batch_size=16")
    assert [s for s, status in statuses.items() if status == "ran"] == ["mjd", "distributions", "report"]
    unchanged = [s for s in STAGES if s not in ("mjd", "distributions", "report")]
    assert {s: _stage_files(copy)[s] for s in unchanged} == {s: _stage_files(first)[s] for s in unchanged}
    results = _results(copy)
    assert results["distributions"]["mjd none"]["items"] == 12
    assert {k: v for k, v in results.items() if k not in ("mjd", "distributions")} == \
        {k: v for k, v in _results(first).items() if k not in ("mjd", "distributions")}


# A child that runs the pipeline like `python recipes/pipeline.py` but SIGKILLs itself right after the second SFT
# adapter saved its first checkpoint: one adapter finished, one half-trained, a real kill the process cannot catch.
KILL_IN_SECOND_SFT = """
import os, runpy, signal, sys
from transformers import Trainer
real, seen = Trainer._save_checkpoint, []
def save(self, *args, **kwargs):
    out = real(self, *args, **kwargs)
    seen.append(self.args.output_dir)
    if len(set(seen)) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
Trainer._save_checkpoint = save
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_runs_resume_and_end_as_an_uninterrupted_run(first, tmp_path):
    folder = tmp_path
    shutil.copy(first / "pipeline.yaml", folder / "pipeline.yaml")
    skip = ["--skip", *EVALUATION]  # what is killed and resumed here is training and generation
    run = folder / "run"

    child = subprocess.run([sys.executable, "-c", KILL_IN_SECOND_SFT, str(ROOT / "recipes" / "pipeline.py"),
                            "--config", "pipeline.yaml", *skip], cwd=folder, capture_output=True, text=True,
                           timeout=600, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert (run / "data" / STAGE_FILE).is_file() and not (run / "sft" / STAGE_FILE).exists()
    assert (run / "sft" / PENDING_FILE).is_file()
    assert (run / "sft" / "seed0" / "nli" / "A1" / "run_manifest.json").is_file()
    half = run / "sft" / "seed0" / "nli" / "A2"
    assert (half / "checkpoint-1").is_dir() and not (half / "run_manifest.json").exists()

    killed = run_script("recipes/pipeline.py", "--config", "pipeline.yaml", *skip, cwd=folder,
                        env={KILL_AFTER_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    sft_record = json.loads((run / "sft" / STAGE_FILE).read_text())
    assert sft_record["resumed"] is True and len(sft_record["attempts"]) == 2  # the killed attempt counts too
    assert (run / "capo" / STAGE_FILE).is_file()
    assert not (run / "generation" / STAGE_FILE).exists() and not (run / "report" / STAGE_FILE).exists()
    shards = sorted((run / "generation" / "nli" / "capo_s0" / "shards").glob("shard-*.jsonl"))
    assert len(shards) == 1
    kept = shards[0].stat().st_mtime_ns

    statuses = _run(folder, *skip)
    assert statuses == {"data": "cached", "sft": "cached", "capo": "cached", "generation": "resumed",
                        "report": "ran"}
    assert shards[0].stat().st_mtime_ns == kept  # the finished shard was kept, not redone
    resumed, uninterrupted = _results(folder), _results(first)
    for key in ("data", "sft", "capo", "generation"):
        assert resumed[key] == uninterrupted[key], key
    assert not list(run.rglob(PENDING_FILE))


def test_bad_input_is_one_located_line_and_leaves_no_stage_json(first, tmp_path, capsys, corpus_lm):
    fresh = tmp_path / "fresh"
    config = _write_config(fresh, corpus_lm)
    config.write_text(config.read_text() + "generate_limt: 3\n")
    line = _fails(fresh, capsys)
    assert "pipeline.yaml:" in line and "field 'generate_limt'" in line and "unknown key" in line

    _write_config(fresh, corpus_lm)
    line = _fails(fresh, capsys, "--sft_args", "max_stepz=2")
    assert "sft_args" in line and "max_stepz" in line
    line = _fails(fresh, capsys, "--finetune", "true", "--finetune_config",  # the config's MJDs: 20 of 341 items
                  str(ROOT / "recipes" / "configs" / "finetune_cpu.yaml"))
    assert "field 'finetune'" in line and "MJD run 'none' covers 20 of them (nli341, limit 20)" in line
    assert not (fresh / "run").exists() or not list((fresh / "run").rglob(STAGE_FILE))

    # A finished run, then a config whose MJD stage fails halfway (too few items to calibrate): the stages it
    # re-runs lose their stage.json, the others keep theirs, and the original config then finishes cleanly.
    copy = _copy(first, tmp_path / "copy")
    line = _fails(copy, capsys, "--mjd_args", "limit=3", "dtype=float32", "items_per_chunk=10", "batch_size=16")
    assert "field 'calibrate'" in line and "at least 5 items" in line
    stage_files = _stage_files(copy)
    assert set(stage_files) == set(STAGES) - {"mjd", "distributions", "report"}
    assert (copy / "run" / "mjd" / PENDING_FILE).is_file()
    statuses = _run(copy)
    assert [s for s, status in statuses.items() if status == "ran"] == ["mjd", "distributions", "report"]
    assert _results(copy) == _results(first)


# The pipeline keys that decide which stages and jobs run and on how many items.
SAME_STAGES_AND_ITEMS = ("tasks", "annotators", "seeds", "split_seed", "nli_dataset", "skip", "conditioned",
                         "generate_kinds", "generate_base", "prompting_shots", "generate_limit", "attribution_splits",
                         "attribution_limit", "exclude_pretrained", "judges", "judge_limit", "imitation_ks",
                         "embeddings", "model_explanations", "calibrate", "finetune", "lewidi_datasets",
                         "perspectivist", "jury", "lewidi_explainers")


def test_the_gpu_study_runs_the_cpu_study_s_stages_on_the_same_items():
    from capo.pipeline.arguments import named_paths, parse
    from capo.pipeline.cache import Context, enabled_stages
    from capo.pipeline.launch import CAPO, MJD, SFT
    from capo.pipeline.layout import units
    from capo.pipeline.stages import STAGES
    from capo.pipeline.stages.distributions import mjd_argv
    from capo.pipeline.stages.explainers import explainer_argv

    def items(name: str) -> dict:
        """What decides the stages and the items each job sees: the keys, the explainers' data options (CapoArguments:
        rows, pairs, splits, few-shot), each MJD run's items."""
        args = parse(["--config", str(ROOT / "recipes" / "configs" / name)])
        ctx = Context(args, Path("run"))
        mjd = {run: MJD.parse(mjd_argv(ctx, run, config))[0] for run, config in named_paths(args.mjd_runs, "mjd_runs").items()}
        return {"stages": [s.name for s in enabled_stages(STAGES, args, args.skip)],
                **{key: getattr(args, key) for key in SAME_STAGES_AND_ITEMS},
                **{kind: job.parse(explainer_argv(ctx, kind, units(args)[0]))[1] for kind, job in (("sft", SFT),
                                                                                                   ("capo", CAPO))},
                "mjd": {run: (a.dataset, a.limit, a.explanations, a.mode, a.exclude_pretrained) for run, a in mjd.items()}}

    cpu, gpu = items("pipeline_study.yaml"), items("pipeline_gpu.yaml")
    assert gpu == cpu


def test_the_gpu_dry_run_prints_the_gpu_options_and_a_memory_plan_per_stage_and_runs_nothing(tmp_path, capsys):
    main = load_script("recipes/pipeline.py").main.__wrapped__
    config = ["--config", str(ROOT / "recipes" / "configs" / "pipeline_gpu.yaml"), "--dry_run", "true"]
    rows = {r["stage"]: r for r in main([*config, "--output_dir", str(tmp_path / "run")])}
    out = capsys.readouterr().out
    assert not (tmp_path / "run").exists()  # nothing written, no stage run
    assert "model meta-llama/Llama-3.1-8B-Instruct" in out and "recipes/model_configs/llama-3-8b.json" in out
    for stage, rate in (("sft", "0.0001"), ("capo", "5e-06")):
        (options,) = rows[stage]["options"]  # one set of options for all 16 adapters
        for shown in ("bf16 true", "gradient_checkpointing true", f"learning_rate {rate}", "dtype bfloat16",
                      "attn_implementation sdpa", "shared_prefix false", "gradient_accumulation_steps "):
            assert shown in options, (stage, shown)
        assert rows[stage]["jobs"] == 16 and f"{stage} step, " in rows[stage]["memory"][0]["plans"][0]
    for stage in ("sft", "capo", "generation", "mjd"):  # the model stages: each planned, each fits an H100
        assert rows[stage]["memory"] and all(m["fits"] for m in rows[stage]["memory"]), stage
    assert all("dtype bfloat16" in options for options in rows["generation"]["options"] + rows["mjd"]["options"])

    # a smaller GPU: the plan says which option to turn, and still runs nothing
    rows = {r["stage"]: r for r in main([*config, "--output_dir", str(tmp_path / "small"), "--tasks", "nli",
                                         "--seeds", "0", "--gpu_memory_gib", "24"])}
    out = capsys.readouterr().out
    assert not rows["sft"]["memory"][0]["fits"] and "DOES NOT FIT: field '" in out and "24.0 GiB" in out
    assert not (tmp_path / "small").exists()


def test_the_third_seed_config_trains_the_study_explainers_with_seed_2_and_nothing_seed_free():
    import yaml

    def config(name: str) -> dict:
        return yaml.safe_load((ROOT / "recipes" / "configs" / name).read_text(encoding="utf-8"))

    study, third = config("pipeline_study.yaml"), config("pipeline_study_seed2.yaml")
    differing = {key for key in study.keys() | third.keys() if study.get(key) != third.get(key)}
    # the explainers' stages (data, sft, capo, generation) see the study's values for every other key, so their
    # adapters and generations are the study's third seed
    assert differing == {"output_dir", "seeds", "generate_base", "prompting_shots", "skip", "mjd_runs", "finetune",
                         "lewidi_datasets"}
    assert third["seeds"] == [2] and not set(third["seeds"]) & set(study["seeds"])
    assert not third["generate_base"] and not third["prompting_shots"] and third["generate_kinds"] == ["sft", "capo"]


@pytest.mark.parametrize("value", ["\n\n", "it's\n\ta", "plain", "two words", "é\\n\n"])
def test_a_reported_command_is_one_line_that_bash_reads_back(value):
    from capo.pipeline.launch import shell_quote

    quoted = shell_quote(value)
    assert "\n" not in quoted
    echoed = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, text=True, check=True)
    assert echoed.stdout == value


def test_the_imitation_summary_pools_seeds_per_kind_and_counts_every_parsed_targeted_response():
    from capo.pipeline.report import _summary_table, imitation_summary

    def row(target, generated, unparsed, first, last, js, agreement, ceiling=0.6, items=5):
        return {"target": target, "generated": generated, "unparsed": unparsed,
                "attribution": [{"k": 1, "groups": 4, "recognised": first}, {"k": 4, "groups": 1, "recognised": last},
                                {"k": 16, "groups": 0, "recognised": float("nan")}],
                "human_ceiling": [{"k": 1, "groups": 5, "recognised": ceiling},
                                  {"k": 4, "groups": 1, "recognised": 1.0}, {"k": 16, "groups": 0}],
                "basis": {"generated": {"items": items, "responses": generated},
                          "human_ceiling": {"items": items, "responses": 5}},
                "label_js_target": js, "item_label_agreement": agreement}

    entry = {
        "human_heldout": {"n": 10, "accuracy": 0.7, "ci_low": 0.4, "ci_high": 0.9}, "heldout_items": 8,
        "sources": {
            "sft_s0": {"A1": row("A1", 5, 1, 0.5, 1.0, 0.2, 0.4), "A2": row("A2", 5, 0, 0.3, 0.0, 0.4, 0.6),
                       "A3": {"generated": 2, "unparsed": 0, "note": "no real held-out response from A3"}},
            "sft_s1": {"A1": row("A1", 5, 0, 0.7, 1.0, 0.6, 0.2, ceiling=0.9, items=4)},
            "base": {"None": {"generated": 5, "unparsed": 0, "attributed": {"A1": 1.0}}},
        },
        "confusion": {"sft_s0": {"n": 11, "accuracy": 0.4, "ci_low": 0.1, "ci_high": 0.7},
                      "sft_s1": {"n": 5, "accuracy": 0.6, "ci_low": 0.2, "ci_high": 1.0}},
    }
    human, sft = imitation_summary(entry)  # base has no target: no row
    # the human row: the judge's sanity check on every held-out response; its items
    assert (human["responses"], human["items"]) == (10, "8") and "first" not in human
    # each kind's ceiling is its own rows' (the targets' real responses on the items each generated set covers)
    assert sft["ceiling_first"] == pytest.approx((0.6 + 0.6 + 0.9) / 3) and sft["ceiling_last"] == pytest.approx(1.0)
    assert (sft["items"], sft["ceiling_items"]) == ("4–5", "4–5")
    table = _summary_table([human, sft]).splitlines()  # the report says how many items each row rests on
    assert "items (generated / ceiling)" in table[0] and "human ceiling k=1 (same items)" in table[0]
    assert table[2].startswith("| human held-out | 8 | 10 |") and table[3].startswith("| sft | 4–5 / 4–5 | 17 |")
    # a row's `generated` counts its parsed responses (imitation leaves the unparsed ones out); a note row's count too
    assert sft["source"] == "sft" and sft["responses"] == 5 + 5 + 2 + 5
    assert sft["attributed"] == [("0", 0.4, 0.1, 0.7), ("1", 0.6, 0.2, 1.0)]
    assert sft["first"] == pytest.approx(0.5) and sft["last"] == pytest.approx(2 / 3) and sft["last_k"] == 4
    assert sft["js"] == pytest.approx(0.4) and sft["agreement"] == pytest.approx(0.4)


def test_the_lewidi_table_says_how_each_decision_was_fitted():
    from capo.pipeline.report import _decision

    assert _decision({"decision": 0.55, "decision_fit": "fitted on all of dev"}) == \
        "threshold 0.55 (fitted on all of dev)"
    assert _decision({"decision": "median", "decision_fit": "cross-fitted over 5 folds of dev",
                      "fold_decisions": ["median", "argmax", "median", "median", "argmax"]}) == \
        "cross-fitted over 5 folds of dev: median ×3, argmax ×2"
    assert _decision({"predictor": "random"}) == "–"
