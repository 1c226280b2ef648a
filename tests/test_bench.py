"""Smoke tests of bench/*.py: each script runs at a tiny size on the offline corpus LM (or a 1-layer random-init
Llama) and reports the figures it promises. Nothing else runs them, so a moved import or a changed library call
would otherwise only show when someone next benchmarks. Timings are not checked beyond being positive."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT, call_script, run_script

from capo.data.datasets import load_task_data
from capo.data.heldout import training_record
from capo.io import write_json

PRECISION_KEYS = {"device", "native_bf16", "auto_dtype", "basis"}


def _ok(result) -> None:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])


def _precision(report: dict) -> dict:
    """The CPU capability recorded beside the timings, as `capo.precision.precision_report` gives it."""
    assert set(report) == PRECISION_KEYS and report["auto_dtype"] in ("float32", "bfloat16"), report
    return report


def _adapters(corpus_lm, root) -> list[str]:
    """Zero-initialised LoRA adapters (identical to the base) for A1 and A2, each with a run manifest saying it
    trained on VariErr's training items: the generation bench's held-out check passes without being switched off."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = load_task_data("nli")
    specs = []
    for annotator in ("A1", "A2"):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(corpus_lm),
                               LoraConfig(r=4, target_modules="all-linear"))
        folder = root / annotator
        model.save_pretrained(folder)
        record = training_record(data, annotator, [i.id for i in data.items("train")])
        write_json(folder / "run_manifest.json", {"stage": "sft", "training_data": record})
        specs.append(f"{annotator}={folder}")
    return specs


def test_attribution_scoring_bench(corpus_lm, tmp_path):
    out = tmp_path / "attr.json"
    result = call_script("bench/attribution_scoring.py", "--model", corpus_lm, "--items", "2", "--json", out)
    _ok(result)
    rows = json.loads(out.read_text())
    _precision(rows[0]["precision"])
    timed = [row for row in rows if "seq_per_s" in row]
    assert [(r["dtype"], r["logits"]) for r in timed] == [
        (d, v) for d in ("float32", "bfloat16") for v in ("explanation positions", "every position")]
    assert all(r["sequences"] > 0 and r["seq_per_s"] > 0 for r in timed)
    # explanation positions only vs every position: the same scores to float rounding
    assert timed[1]["max_diff_vs_explanation_positions"] < 1e-4
    assert math.isfinite(timed[3]["max_diff_vs_explanation_positions"])
    assert math.isfinite(rows[-1]["bf16_vs_fp32_max_diff"])
    assert '"seq_per_s"' in result.stdout and '"precision"' in result.stdout


def test_generation_throughput_bench(corpus_lm, tmp_path):
    out = tmp_path / "gen.json"
    result = call_script("bench/generation_throughput.py", "--model", corpus_lm,
                         "--adapters", *_adapters(corpus_lm, tmp_path / "adapters"), "--limit", "2",
                         "--batch_size", "4", "--max_new_tokens", "4", "--json", out)
    _ok(result)
    report = json.loads(out.read_text())
    for name, batch_size in (("batched", 4), ("one_at_a_time", 1)):
        row = report[name]
        assert row["records"] == 4 and row["batch_size"] == batch_size  # 2 items x 2 adapters
        assert row["records_per_s"] > 0 and row["tokens_per_s"] > 0
    assert 0 <= report["records_differing"] <= 4 and report["speedup_records"] > 0
    setup = report["setup"]
    # the default dtype is auto: the setup records what it resolved to on this CPU, and why
    assert setup["dtype"] == _precision(setup["precision"])["auto_dtype"]


def test_mjd_throughput_bench_random_init(corpus_lm, tmp_path):
    out = tmp_path / "mjd.json"
    result = call_script("bench/mjd_throughput.py", "--random_init", "tiny", "--num_hidden_layers", "1",
                         "--tokenizer", corpus_lm, "--items", "1", "--dtype", "auto", "--repeats", "1",
                         "--seed_new_tokens", "2,1", "--output", out)
    _ok(result)
    report = json.loads(out.read_text())
    assert report["dtype"] == _precision(report["precision"])["auto_dtype"]
    assert report["model"] == "random-init tiny (1 layers)" and report["items"] == 1 and report["prompts"] > 0
    assert set(report["results"]) == {"ours (prefix reuse)", "ours (no prefix reuse)",
                                      "seed generate, max_new_tokens=2", "seed generate, max_new_tokens=1"}
    for name, row in report["results"].items():
        assert row["prompts_per_s"] > 0, name
        # our scorer and the seed method read the same letter scores (bf16 where auto picks it: loose)
        for key in ("max_abs_dp_p_softmax", "max_abs_dp_prob", "max_abs_dp_mjd"):
            assert 0 <= row[key] < 0.05, (name, key, row[key])
    assert 0 < report["results"]["ours (prefix reuse)"]["mfu"] and report["peak_tflops"] > 0
    assert "| ours (prefix reuse) |" in result.stdout


def test_smollm2_dtype_bench(corpus_lm, tmp_path):
    out = tmp_path / "dtype.json"
    # Its own process: a dataclass defined in a script loaded by `load_script` (a module outside sys.modules) cannot
    # resolve its postponed annotations.
    result = run_script("bench/smollm2_dtype.py", "--model", corpus_lm, "--prompts", "2", "--new_tokens", "4",
                        "--rounds", "1", "--json", out)
    _ok(result)
    report = json.loads(out.read_text())
    _precision(report["precision"])
    assert report["prompts"] == 2 and report["scored_prompt_tokens"] > 0 and report["new_tokens"] == 4
    for dtype in ("float32", "bfloat16"):
        assert report["times"][dtype]["forward_s"] > 0 and report["times"][dtype]["generate_s"] > 0
    assert all(v > 0 for v in report["bf16_speedup"].values())
    assert 0 <= report["argmax_letter_agreement"] <= 1 and 0 <= report["same_generated_text"] <= 2
    assert math.isfinite(report["max_abs_letter_logit_diff"])
    assert "float32   forward" in result.stdout and "precision:" in result.stdout


def test_study_slice_cost_bench(corpus_lm, tmp_path):
    # a finished slice's job times: 100 s of training, 50 s of the rest
    meta = tmp_path / "slice.json"
    sources = {"capo": {"kind": "capo"}, "sft_step1": {"kind": "sft_curve"}, "sft_step2": {"kind": "sft"}}
    meta.write_text(json.dumps({"part": "core", "sources": sources, "wall_s": {
        "sft A1": 60.0, "capo A1": 30.0, "pseudo_capo A1": 10.0, "generate capo": 40.0, "labels capo": 5.0,
        "generate sft_step1": 1.0, "generate sft_step2": 2.0, "total": 150.0}}))
    result = run_script("bench/study_slice_cost.py", "--model", corpus_lm, "--prompts", "2", "--tokens", "8",
                        "--rounds", "1", "--slice", meta, "--reference_forward", "1.0", "--reference_train_step", "2.0")
    _ok(result)
    report = json.loads(result.stdout)
    _precision(report["machine"])
    here, projection = report["here"], report["projection"]
    assert here["forward_s"] > 0 and here["train_step_s"] > 0
    assert projection["measured_training_s"] == 100.0 and projection["measured_rest_s"] == 50.0
    expected = 100.0 * 2.0 / here["train_step_s"] + 50.0 * 1.0 / here["forward_s"]
    assert abs(projection["projected_s"] - expected) <= 1
    # the core's three parts: each its own jobs (the curve's earlier step with capo, the SFT explainer with sft) and
    # the unattributed 2 s (150 - 148) each
    parts = report["projection_by_part"]
    assert {k: (v["measured_training_s"], v["measured_rest_s"]) for k, v in parts.items()} == {
        "sft": (60.0, 4.0), "capo": (30.0, 48.0), "pseudo": (10.0, 2.0)}
    # a controls slice: one part a CAPO variant
    meta.write_text(json.dumps({"part": "controls", "sources": {"capo_same_label": {"kind": "capo_same_label"}},
                                "wall_s": {"capo_same_label A1": 20.0, "generate capo_same_label": 6.0,
                                           "labels capo_same_label": 3.0, "total": 30.0}}))
    result = run_script("bench/study_slice_cost.py", "--model", corpus_lm, "--prompts", "2", "--tokens", "8",
                        "--rounds", "1", "--slice", meta)
    _ok(result)
    parts = json.loads(result.stdout)["projection_by_part"]
    assert {k: (v["measured_training_s"], v["measured_rest_s"]) for k, v in parts.items()} == {
        "capo_same_label": (20.0, 10.0)}


@pytest.mark.slow
@pytest.mark.heavy  # five training processes (~45 s): `make test-all`; `make test` imports it below
def test_train_throughput_bench(corpus_lm, tmp_path):
    """Five variants, each in its own process (peak memory is its own): ~45 s on 2 cores, mostly interpreter and
    TRL start-up."""
    out = tmp_path / "train.json"
    result = call_script("bench/train_throughput.py", "--model", corpus_lm, "--pairs", "4", "--agreement_pairs", "2",
                         "--json", out)
    _ok(result)
    report = json.loads(out.read_text())
    _precision(report["precision"])
    for variant in ("trl", "trl_no_checkpointing", "packed", "packed_trainer"):
        row = report[variant]
        assert row["pairs"] == 4 and row["steps"] >= 1, variant
        assert row["wall_s"] > 0 and row["pair_tokens_per_s"] > 0 and row["peak_rss_mib"] > 0, variant
        assert math.isfinite(row["held_out_loss"]) and math.isfinite(row["mean_loss"]), variant
    for key in ("speedup_wall", "speedup_wall_vs_no_checkpointing", "speedup_wall_trainer_subclass", "memory_ratio",
                "memory_ratio_trainer_subclass"):
        assert report[key] > 0, key
    agreement = report["agreement"]
    # TRL and the packed code score the same tokens and give the same per-pair losses in fp32
    assert agreement["pairs"] == 2 and agreement["token_mismatches"] == 0, agreement
    assert agreement["max_abs_diff"] < 1e-4 and agreement["dtypes"] == ["torch.float32", "torch.float32"], agreement


@pytest.mark.slow
@pytest.mark.heavy  # every stage of the GPU path at tiny size (~20 s): `make test-all`; `make test` imports it below
def test_gpu_check_tiny(corpus_lm, tmp_path):
    """bench/gpu_check.py --tiny: the GPU path's every stage on CPU at tiny shapes (~20 s on 2 cores), with the
    figures its table promises; TRL and the shared-prefix trainer give the same loss on the same batch."""
    out = tmp_path / "gpu_check.json"
    result = call_script("bench/gpu_check.py", "--tiny", "--tokenizer", corpus_lm, "--output", out)
    _ok(result)
    report = json.loads(out.read_text())
    assert report["dtype"] == _precision(report["precision"])["auto_dtype"] and report["tiny"]
    rows = {row["stage"]: row for row in report["rows"]}
    assert list(rows) == ["setup: tokenizer, random model saved", "sft", "capo (TRL)", "capo (shared prefix)",
                          "agreement", "generation", "labels", "mjd: ours (prefix reuse)", "mjd: ours (no prefix reuse)",
                          "mjd: seed generate, max_new_tokens=2", "mjd: seed generate, max_new_tokens=1"]
    for name, row in rows.items():
        assert row["seconds"] > 0 and row["throughput"] > 0 and row["peak_memory_gib"] > 0, name
    for name in ("sft", "capo (TRL)", "capo (shared prefix)", "mjd: ours (prefix reuse)"):
        assert 0 < rows[name]["mfu"] < 1, name
    # the same 8 pairs, one epoch: the packed trainer forwards fewer tokens than TRL
    assert rows["capo (shared prefix)"]["tokens"] < rows["capo (TRL)"]["tokens"]
    agreement = rows["agreement"]
    assert agreement["pairs"] == 4 and agreement["rel_diff"] < 1e-3, agreement
    assert rows["generation"]["records"] == 4 and rows["labels"]["prompts"] == 4 and rows["labels"]["finite"]
    assert all(rows[k]["max_abs_dp_mjd"] < 0.05 for k in rows if k.startswith("mjd"))
    summary = report["summary"]
    assert summary["speed-up shared prefix vs TRL (same pairs)"] > 0
    assert summary["MJD speed-up vs seed generate, max_new_tokens=2"] > 0
    assert set(report["versions"]) == {"torch", "transformers", "trl", "peft", "accelerate", "datasets"}
    assert "| capo (shared prefix) | tiny |" in result.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_every_bench_script_imports_and_parses_its_help(script):
    """A moved import fails here in every `make test` (the tiny runs above cover the rest; two of them are heavy)."""
    result = run_script(f"bench/{script}", "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower() or "--" in result.stdout
