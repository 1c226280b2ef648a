"""Generation at scale: records per (item, annotator), resume after a real SIGKILL, multi-process sharding, errors."""

from __future__ import annotations

import dataclasses
import json
import signal

import pytest
from conftest import load_script, make_adapter, run_script

from capo.data.prompts import parse_response
from capo.errors import DataError
from capo.generate.explanations import MERGED, GenerateArguments, run_generation
from capo.runner import KILL_AFTER_ENV, shard_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def argv(corpus_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-adapters")
    adapters = [f"{name}={make_adapter(corpus_lm, root / name, seed)}" for name, seed in (("A1", 1), ("A2", 2))]
    # 6 held-out items x (A1, A2, base) = 18 records in 5 shards of 4. The random adapters have no run manifest:
    # allowed explicitly (what they trained on is not checked; the summary and manifest name them).
    return ["--model", str(corpus_lm), "--dataset", "varierr", "--split", "test", "--limit", "6",
            "--adapters", *adapters, "--base", "true", "--dtype", "float32", "--batch_size", "8",
            "--max_new_tokens", "24", "--shard_size", "4", "--allow_unchecked_adapters", "true"]


@pytest.fixture(scope="module")
def uninterrupted(argv, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen-full")
    summary = load_script("recipes/generate.py").main(argv + ["--output_dir", str(out)])
    return out, summary


def test_one_record_per_item_and_annotator(uninterrupted, corpus_lm):
    out, summary = uninterrupted
    records = [json.loads(line) for line in (out / MERGED).read_text().splitlines()]
    assert summary["records"] == len(records) == 18 and summary["shards"] == 5
    ids = list(dict.fromkeys(r["id"] for r in records))
    assert len(ids) == 6
    assert [(r["id"], r["annotator"]) for r in records] == [(i, a) for i in ids for a in ("A1", "A2", "base")]
    for record in records:
        parsed = parse_response(record["raw"], "nli")
        assert record["parsed"] == (parsed is not None)  # unparsable generations are kept, flagged
        assert (record["label"], record["explanation"]) == (parsed or (None, None))
        assert record["model"] == str(corpus_lm)
        assert (record["adapter"] is None) == (record["annotator"] == "base")
        assert 1 <= record["generated_tokens"] <= 24 and record["prompt_tokens"] > 50
    by_annotator = {a: [r["raw"] for r in records if r["annotator"] == a] for a in ("A1", "A2", "base")}
    assert by_annotator["A1"] != by_annotator["base"] and by_annotator["A2"] != by_annotator["A1"]
    assert summary["unparsed"] == sum(not r["parsed"] for r in records)
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["config"]["max_new_tokens"] == 24
    # adapters used without a run manifest are named as unverified, in the summary and the run manifest
    unchecked = {name: r["adapter"] for name in ("A1", "A2") for r in records if r["annotator"] == name}
    assert summary["unchecked_adapters"] == unchecked and len(unchecked) == 2
    assert manifest["summary"]["unchecked_adapters"] == unchecked
    assert manifest["config"]["allow_unchecked_adapters"] is True


def test_killed_run_resumes_to_the_identical_record_set(argv, uninterrupted, tmp_path):
    full, _ = uninterrupted
    out = tmp_path / "run"
    killed = run_script("recipes/generate.py", *argv, "--output_dir", out, env={KILL_AFTER_ENV: "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = {k: shard_path(out, k).stat().st_mtime_ns for k in range(5) if shard_path(out, k).exists()}
    assert sorted(done) == [0, 1] and not (out / MERGED).exists()
    # A kill in the middle of an atomic write leaves only a temporary file, never a partial shard.
    stray = shard_path(out, 2).with_name(".shard-00002.jsonl.abc123.tmp")
    stray.write_text('{"id": "half a rec')
    summary = load_script("recipes/generate.py").main(argv + ["--output_dir", str(out)])
    assert summary["this_process"]["records"] == 4 + 4 + 2  # only the 3 unfinished shards were generated
    assert {k: shard_path(out, k).stat().st_mtime_ns for k in done} == done  # finished shards untouched
    assert (out / MERGED).read_bytes() == (full / MERGED).read_bytes()
    assert not stray.exists()


def test_processes_write_their_own_shards_and_merge_identically(argv, uninterrupted, tmp_path):
    from trl import TrlParser

    full, _ = uninterrupted
    (args,) = TrlParser((GenerateArguments,)).parse_args_and_config(args=argv + ["--output_dir", str(tmp_path)])
    second = run_generation(args, process_index=1, num_processes=2)
    assert second["merged"] is None
    assert [shard_path(tmp_path, k).exists() for k in range(5)] == [False, True, False, True, False]
    first = run_generation(args, process_index=0, num_processes=2)
    assert first["this_process"]["records"] == 4 + 4 + 2
    assert (tmp_path / MERGED).read_bytes() == (full / MERGED).read_bytes()


def test_one_line_errors(argv, uninterrupted, tmp_path, capsys):
    full, _ = uninterrupted
    main = load_script("recipes/generate.py").main
    cases = [
        (argv + ["--output_dir", str(full), "--max_new_tokens", "25"], "field 'max_new_tokens'"),
        (argv + ["--output_dir", str(tmp_path), "--adapters", "A1"], "expected NAME=PATH"),
        (argv + ["--output_dir", str(tmp_path), "--dataset", str(tmp_path / "none.jsonl")], "not a file"),
        (argv + ["--output_dir", str(tmp_path), "--adapters", f"A1={tmp_path}/missing"], "missing: adapter folder not found"),
        (argv + ["--output_dir", str(tmp_path), "--backend", "vllm"], "vllm"),
    ]
    for args, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    with pytest.raises(DataError, match="duplicate item id"):
        from capo.data.formats.varierr import load_varierr
        from capo.generate.explanations import plan_units

        item = load_varierr()[0]
        plan_units([item, item], {"base": None})


def test_an_adapter_retrained_in_place_refuses_to_resume(corpus_lm, tmp_path, capsys):
    adapter = make_adapter(corpus_lm, tmp_path / "A3", seed=3)
    argv = ["--model", str(corpus_lm), "--limit", "1", "--adapters", f"A3={adapter}", "--dtype", "float32",
            "--max_new_tokens", "4", "--output_dir", str(tmp_path / "out"), "--allow_unchecked_adapters", "true"]
    main = load_script("recipes/generate.py").main
    assert main(argv)["merged"]
    assert main(argv)["this_process"]["records"] == 0  # same weights: everything already done
    make_adapter(corpus_lm, adapter, seed=4)
    with pytest.raises(SystemExit):
        main(argv)
    assert "field 'annotators'" in capsys.readouterr().err


def test_a_tokenizer_without_chat_template_is_a_one_line_error(corpus_lm):
    from transformers import AutoTokenizer

    from capo.data.formats.varierr import load_varierr
    from capo.generate.explanations import Unit, render_unit_prompt

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    unit = Unit(load_varierr()[0], "base", None)
    assert render_unit_prompt(tokenizer, unit).endswith("<|assistant|>\n")
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        render_unit_prompt(tokenizer, unit)


def test_held_out_items_are_never_in_the_explainers_training_rows():
    from capo.data.datasets import load_task_data
    from capo.data.formats.varierr import load_varierr
    from capo.generate.explanations import select_items
    from capo.train.pairs import sft_rows

    everything = [i.id for i in load_varierr()]
    for seed in (0, 1):
        train = load_task_data("nli", "varierr", split_seed=seed).items("train")
        trained_on = {row["id"] for annotator in ("A1", "A2", "A3", "A4") for row in sft_rows(train, annotator)}
        assert len(trained_on) > 200  # the explainers' SFT data really is the train part
        test = [i.id for i in select_items("varierr", "test", split_seed=seed)]
        dev = [i.id for i in select_items("varierr", "dev", split_seed=seed)]
        assert test and dev and not (set(test) | set(dev)) & trained_on and not set(test) & set(dev)
        # split None: every item exactly once; limit: the first N of the split, in input order
        assert sorted(i.id for i in select_items("varierr", None, split_seed=seed)) == sorted(everything)
        assert [i.id for i in select_items("varierr", "test", split_seed=seed, limit=3)] == test[:3]
    ids = lambda seed: {i.id for i in select_items("varierr", "test", split_seed=seed)}
    assert ids(0) != ids(1)  # the seed is passed on


def test_prompting_baselines_show_the_targets_own_training_answers_and_fit_the_context(corpus_lm, tmp_path):
    from capo.data.datasets import load_task_data

    train = {i.id: i for i in load_task_data("nli", "varierr", split_seed=0).items("train")}
    common = {"model": str(corpus_lm), "dataset": "varierr", "split": "test", "limit": 3, "targets": ["A1", "A2"],
                  "dtype": "float32", "batch_size": 8, "max_new_tokens": 8, "shard_size": 4}
    summary = run_generation(GenerateArguments(**common, few_shot=3, output_dir=str(tmp_path / "fs3")))
    records = [json.loads(line) for line in (tmp_path / "fs3" / MERGED).read_text().splitlines()]
    assert summary["few_shot_reduced"] == 0 and [r["annotator"] for r in records] == ["A1", "A2"] * 3
    for record in records:
        assert record["target"] == record["annotator"] and record["adapter"] is None
        assert len(record["few_shot_ids"]) == 3 and record["id"] not in record["few_shot_ids"]
        # every example is one of the target's own training answers, never a held-out item
        assert all(any(a.annotator == record["target"] for a in train[i].annotations) for i in record["few_shot_ids"])
    assert records[0]["few_shot_ids"] != records[1]["few_shot_ids"]  # each target's own history
    assert min(r["prompt_tokens"] for r in records) > 150

    # Zero-shot: one prompt for every target, generated once (greedy) and recorded for each.
    run_generation(GenerateArguments(**common, output_dir=str(tmp_path / "zero")))
    zero = [json.loads(line) for line in (tmp_path / "zero" / MERGED).read_text().splitlines()]
    assert all(r["few_shot_ids"] == [] for r in zero) and zero[0]["raw"] == zero[1]["raw"]
    assert max(r["prompt_tokens"] for r in zero) < min(r["prompt_tokens"] for r in records)

    # A context too short for 3 examples: fewer are shown, and the summary says so.
    short = max(r["prompt_tokens"] for r in zero) + 8 + 40
    summary = run_generation(GenerateArguments(**common, few_shot=3, max_prompt_tokens=short,
                                               output_dir=str(tmp_path / "short")))
    cut = [json.loads(line) for line in (tmp_path / "short" / MERGED).read_text().splitlines()]
    assert summary["few_shot_reduced"] == 6 and all(r["prompt_tokens"] + 8 <= short for r in cut)
    assert all(r["few_shot_ids"] == full["few_shot_ids"][:len(r["few_shot_ids"])] for r, full in zip(cut, records))


def test_a_conditioned_adapter_writes_as_each_target_with_its_id_in_the_prompt(corpus_lm, tmp_path):
    from transformers import AutoTokenizer

    from capo.data.prompts import persona_line
    from capo.generate.explanations import plan_units, render_unit_prompt, select_items

    adapter = make_adapter(corpus_lm, tmp_path / "all", 3)
    options = {"model": str(corpus_lm), "dataset": "varierr", "split": "test", "limit": 2, "dtype": "float32",
               "adapters": [f"cond={adapter}"], "targets": ["A1", "A3"], "conditioned": True, "max_new_tokens": 8,
               "allow_unchecked_adapters": True}  # a random adapter: no run manifest
    args = GenerateArguments(**options, output_dir=str(tmp_path / "out"))
    assert args.annotators() == {"A1": "cond", "A3": "cond"}
    run_generation(args)
    records = [json.loads(line) for line in (tmp_path / "out" / MERGED).read_text().splitlines()]
    assert [(r["annotator"], r["target"], r["adapter"], r["conditioned"]) for r in records] == [
        ("A1", "A1", str(adapter), True), ("A3", "A3", str(adapter), True)] * 2
    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    units = plan_units(select_items("varierr", "test", limit=1), args.annotators(), targets=["A1", "A3"],
                       conditioned=True)
    prompts = [render_unit_prompt(tokenizer, unit) for unit in units]
    assert [persona_line(a) in p for a, p in zip(["A1", "A3"], prompts)] == [True, True]
    assert persona_line("A3") not in prompts[0]
    # the same targets on the base model (a prompting baseline) carry no persona line
    base = plan_units(select_items("varierr", "test", limit=1), {"A1": None}, targets=["A1"])
    assert "You are annotator" not in render_unit_prompt(tokenizer, base[0])


def test_a_response_prefix_starts_every_answer_and_a_stop_string_ends_it(corpus_lm, tmp_path):
    from capo.generate.backends.base import cut_at_stop

    common = {"model": str(corpus_lm), "dataset": "varierr", "split": "test", "limit": 3, "targets": ["A1"],
              "dtype": "float32", "max_new_tokens": 24}

    def records(name: str, **options) -> list[dict]:
        run_generation(GenerateArguments(**common, **options, output_dir=str(tmp_path / name)))
        return [json.loads(line) for line in (tmp_path / name / MERGED).read_text().splitlines()]

    plain, prefixed = records("plain"), records("prefixed", response_prefix="Label:")
    stopped = records("stopped", response_prefix="Label:", stop=["\n"])
    for p, q in zip(plain, prefixed, strict=True):
        assert q["raw"].startswith("Label:") and q["prompt_tokens"] > p["prompt_tokens"]  # the prefix is in the prompt
        assert q["parsed"] == (parse_response(q["raw"], "nli") is not None)
    # Greedy decoding with a stop string is the same decoding cut before the stop string, and it ends sooner.
    assert any("\n" in q["raw"] for q in prefixed)
    for q, r in zip(prefixed, stopped, strict=True):
        assert r["raw"] == "Label:" + cut_at_stop(q["raw"][len("Label:"):], ["\n"])
        assert "\n" not in r["raw"] and r["generated_tokens"] <= q["generated_tokens"]
    assert sum(r["generated_tokens"] for r in stopped) < sum(q["generated_tokens"] for q in prefixed)


def test_the_pipelines_prompting_runs_pass_on_the_response_prefix_and_stop(tmp_path):
    from capo.pipeline import layout
    from capo.pipeline.arguments import parse
    from capo.pipeline.launch import GENERATE

    args = parse(["--output_dir", str(tmp_path), "--tasks", "nli", "--annotators", "A1", "A2", "--seeds", "0",
                  "--generate_kinds", "sft", "--prompting_shots", "0", "4"])
    runs = layout.generation_runs(args, tmp_path, "nli")
    for name in ("zs", "fs4"):
        parsed = GENERATE.parse(runs[name])[0]
        assert (parsed.response_prefix, parsed.stop, parsed.targets) == ("Label:", ["\n\n"], ["A1", "A2"])
    explainer = GENERATE.parse(runs["sft_s0"])[0]  # the trained explainers answer as they were trained
    assert (explainer.response_prefix, explainer.stop) == ("", None)
    plain = dataclasses.replace(args, prompting_response_prefix="", prompting_stop=[])  # as `[]` in a YAML config
    assert {"--response_prefix", "--stop"}.isdisjoint(layout.generation_runs(plain, tmp_path, "nli")["zs"])


@pytest.mark.parametrize("changes, field", [
    ({"targets": ["A1"], "adapters": ["A1=x"]}, "targets"),
    ({"adapters": ["c=x"], "conditioned": True}, "conditioned"),
    ({"adapters": ["c=x", "d=y"], "targets": ["A1"], "conditioned": True}, "conditioned"),
    ({"targets": ["A9"]}, "annotator"),
    ({"few_shot": 2}, "few_shot"),
    ({"targets": ["A1"], "few_shot": -1}, "few_shot"),
    ({"targets": ["A1"], "max_prompt_tokens": 0}, "max_prompt_tokens"),
])
def test_prompting_baseline_options_are_checked_while_parsing(changes, field):
    with pytest.raises(DataError) as err:
        GenerateArguments(**{"output_dir": "x", **changes})
    assert field in str(err.value)


def test_generation_bench_batched_equals_one_at_a_time_in_fp32(corpus_lm, tmp_path):
    """bench/generation_throughput.py: both variants answer every record, identically in fp32 (left padding)."""
    adapters = [f"{name}={make_adapter(corpus_lm, tmp_path / name, seed)}" for name, seed in (("A1", 1), ("A2", 2))]
    out = tmp_path / "bench.json"
    results = load_script("bench/generation_throughput.py").main(
        ["--model", str(corpus_lm), "--adapters", *adapters, "--limit", "3", "--batch_size", "6",
         "--max_new_tokens", "12", "--dtype", "float32", "--json", str(out), "--allow_unchecked_adapters", "true"])
    assert results["batched"]["records"] == results["one_at_a_time"]["records"] == 6
    assert results["records_differing"] == 0 and results["batched"]["batch_size"] == 6
    assert json.loads(out.read_text())["setup"]["items"] == 3
