"""Held-out guarantees: adapters' run manifests record what they trained on; generation and attribution select held-out
items from that split and refuse training items; an adapter without a run manifest is refused by every tool unless
--allow_unchecked_adapters true, which the output then records; the corpus LM's pre-training items are counted (MJD,
attribution).

The last tests train real SFT and CAPO adapters with the recipes (tiny corpus LM, 2 steps) and run generation and
attribution on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

from capo.data.datasets import load_splits, load_task_data
from capo.data.heldout import (
    check_heldout,
    select_heldout,
    training_items,
    training_record,
    unchecked_adapters,
)
from capo.data.splits import split_items
from capo.errors import DataError
from capo.io import write_json


def _fake_adapter(folder: Path, record: dict) -> str:
    """An adapter folder holding only a run manifest (selection and the check read nothing else)."""
    write_json(folder / "run_manifest.json", {"stage": "sft", "training_data": record})
    return str(folder)


@pytest.fixture(scope="module")
def varierr_seed0():
    data = load_task_data("nli")
    return data, training_record(data, "A1", [i.id for i in data.items("train")])


def _ids(items) -> set[str]:
    return {item.id for item in items}


def test_the_issues_leaks_are_refused(varierr_seed0, tmp_path):
    """Cut on their own, nli341's test split and LeWiDi's test file are mostly VariErr split-0 training items."""
    _, record = varierr_seed0
    adapters = {"A1": _fake_adapter(tmp_path / "A1", record)}
    for dataset, expected in (("nli341", "31 of these 34 items"), ("lewidi-ven-test", "42 of these 50 items")):
        own_test = load_splits(dataset).items("test")
        with pytest.raises(DataError) as err:
            check_heldout(own_test, adapters)
        assert str(err.value) == (f"adapter A1 ({adapters['A1']}) trained on {expected} (it trained on varierr split "
                                  "seed 0; pick its dev or test items)")


def test_selection_follows_the_adapters_split(varierr_seed0, tmp_path):
    data, record = varierr_seed0
    adapters = {"A1": _fake_adapter(tmp_path / "A1", record)}
    test_ids = set(data.split().test)
    nli341 = load_splits("nli341", split_seed=5)
    chosen = select_heldout(nli341, "test", adapters)
    assert _ids(chosen) == _ids(nli341.all_items()) & test_ids and len(chosen) == 27
    assert _ids(select_heldout(nli341, "test")) == set(nli341.split().test) != _ids(chosen)  # no adapter: own split
    check_heldout(chosen, adapters)  # passes
    ven = select_heldout(load_task_data("nli", "lewidi-ven"), "test", adapters)
    assert _ids(ven) == test_ids  # every VariErr test id is in one of the LeWiDi files
    # Ids new to the adapter's data keep their own data set's split (ChaosNLI is mostly not VariErr).
    chaos = load_splits("chaosnli-dev")
    known, own = _ids(data.all_items()), set(chaos.split().test)
    expected = {i for i in _ids(chaos.all_items()) if (i in test_ids if i in known else i in own)}
    assert _ids(select_heldout(chaos, "test", adapters)) == expected
    assert expected - known and expected & known
    with pytest.raises(DataError, match="unknown split 'val'"):
        select_heldout(nli341, "val", adapters)


def test_a_chain_of_adapters_holds_out_what_every_link_held_out(varierr_seed0, tmp_path):
    data, sft_record = varierr_seed0
    seed1 = load_task_data("nli", split_seed=1)
    sft = _fake_adapter(tmp_path / "sft", sft_record)
    sft_manifest = json.loads(Path(sft, "run_manifest.json").read_text())
    capo_record = training_record(seed1, "A1", [i.id for i in seed1.items("train")[:3]], context_ids=["shown"],
                                  init_adapter=(sft, sft_manifest))
    capo = _fake_adapter(tmp_path / "capo", capo_record)
    manifest = json.loads(Path(capo, "run_manifest.json").read_text())
    assert training_items(manifest) == set(data.split().train) | {i.id for i in seed1.items("train")[:3]} | {"shown"}
    chosen = select_heldout(seed1, "test", {"A1": capo})
    assert _ids(chosen) == set(seed1.split().test) & set(data.split().test) and chosen
    # Items held out by CAPO's own split but trained on by the SFT adapter it started from are refused.
    with pytest.raises(DataError, match=r"adapter A1 \(.*capo\) trained on \d+ of these 50 items"):
        check_heldout(seed1.items("test"), {"A1": capo})


def test_adapters_without_a_record(varierr_seed0, tmp_path):
    """Fail closed: an adapter without a run manifest (a hub id, a copied folder) is refused in one located line,
    unless allowed; then it is said in one line, skipped, and returned for the output to record."""
    data, record = varierr_seed0
    with pytest.raises(DataError) as err:
        check_heldout(data.items("test"), {"hub": "someone/adapter"})
    assert str(err.value) == (
        "someone/adapter: adapter hub has no run manifest (run_manifest.json), so which items it trained on is "
        "unknown and held-out items cannot be checked: use an adapter trained by recipes/sft.py or recipes/capo.py, "
        "or pass --allow_unchecked_adapters true to use it unverified")
    copied = tmp_path / "copied"
    copied.mkdir()
    with pytest.raises(DataError, match=r"copied: adapter A2 has no run manifest .*\(1 more adapter\(s\) lack one"):
        check_heldout(data.items("test"), {"A1": _fake_adapter(tmp_path / "A1", record), "A2": str(copied),
                                            "hub": "someone/adapter"})
    lines: list[str] = []
    unchecked = check_heldout(data.items("train"), {"hub": "someone/adapter"}, log=lines.append, allow_unchecked=True)
    assert unchecked == {"hub": "someone/adapter"}
    assert lines == [("adapter hub (someone/adapter) has no run manifest: which items it trained on is unknown, "
                      "not checked (--allow_unchecked_adapters)")]
    # allowed, the unchecked adapter is skipped, but the checked ones still refuse their training items
    adapters = {"A1": _fake_adapter(tmp_path / "A1", record), "A2": str(copied)}
    with pytest.raises(DataError, match=r"adapter A1 \(.*\) trained on 3 of these 3 items"):
        check_heldout(data.items("train")[:3], adapters, log=lines.append, allow_unchecked=True)
    assert check_heldout(data.items("test"), adapters, log=lambda _: None, allow_unchecked=True) == {"A2": str(copied)}
    assert check_heldout(data.items("test"), {"A1": adapters["A1"]}) == {}  # every adapter checked
    assert unchecked_adapters(adapters, allow=True, log=lambda _: None) == {"A2": str(copied)}
    write_json(tmp_path / "old" / "run_manifest.json", {"stage": "sft"})
    with pytest.raises(DataError, match="does not record the adapter's training items"):
        check_heldout(data.items("test"), {"A1": str(tmp_path / "old")})
    with pytest.raises(DataError, match="does not record the adapter's training items"):
        select_heldout(data, "test", {"A1": str(tmp_path / "old")})


def test_mjd_reports_and_can_leave_out_pretraining_items(corpus_lm, tmp_path):
    from capo.data.registry import load_items
    from capo.mjd.run import MJDScriptArguments, run_mjd

    first = load_items("nli341")[:12]
    seen = sum(i.id in set(split_items(load_items("varierr"), seed=0).train) for i in first)
    assert 0 < seen < 12
    runs = {}
    for exclude in (False, True):
        lines: list[str] = []
        args = MJDScriptArguments(output_dir=str(tmp_path / str(exclude)), model_name_or_path=str(corpus_lm),
                                  mode="none", limit=12, exclude_pretrained=exclude, items_per_chunk=16)
        runs[exclude] = run_mjd(args, log=lines.append), lines
    assert f"{seen} of 12 items are in the base model's pre-training corpus" in runs[False][1][0]
    assert runs[True][1][0] == f"leaving out {seen} of 12 items the base model was pre-trained on"
    assert runs[False][0]["items"] == 12 and runs[True][0]["items"] == 12 - seen
    kept = [json.loads(line)["id"] for line in (tmp_path / "True" / "mjd.jsonl").read_text().splitlines()]
    assert kept == [i.id for i in first if i.id not in set(split_items(load_items("varierr"), seed=0).train)]


# --- adapters without a run manifest, allowed explicitly: every tool runs and names them ---------------------------


@pytest.fixture(scope="module")
def bare(corpus_lm, tmp_path_factory) -> Path:
    """root/nli/{A1,A2,all}: zero-initialised LoRA adapters (the base model's outputs) saved without a run manifest,
    as a hub adapter or a folder copied without it would be."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("bare")
    for name in ("A1", "A2", "all"):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(corpus_lm),
                               LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=True))
        model.save_pretrained(root / "nli" / name)
        assert not (root / "nli" / name / "run_manifest.json").exists()
    return root


def _refused(capsys, script: str, argv: list, folder: Path) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {folder}: adapter ") and "has no run manifest" in err, err
    assert err.endswith("or pass --allow_unchecked_adapters true to use it unverified"), err


ALLOW = ["--allow_unchecked_adapters", "true"]


def test_generation_with_unchecked_adapters(bare, corpus_lm, tmp_path, capsys):
    argv = ["--model", corpus_lm, "--adapters", f"A1={bare / 'nli' / 'A1'}", "--limit", "1", "--dtype", "float32",
            "--max_new_tokens", "2", "--output_dir", tmp_path / "gen"]
    _refused(capsys, "recipes/generate.py", argv, bare / "nli" / "A1")
    assert not (tmp_path / "gen").exists()
    summary = load_script("recipes/generate.py").main([str(a) for a in argv + ALLOW])
    assert "adapter A1 (" in capsys.readouterr().out  # said in one line
    assert summary["merged"] and summary["unchecked_adapters"] == {"A1": str(bare / "nli" / "A1")}
    assert _manifest(tmp_path / "gen")["summary"]["unchecked_adapters"] == {"A1": str(bare / "nli" / "A1")}


def test_attribution_with_unchecked_adapters(bare, corpus_lm, tmp_path, capsys):
    template = bare / "{task}" / "{annotator}"
    out = tmp_path / "report.json"
    argv = ["--model", corpus_lm, "--adapter", f"same={template}", "--annotators", "A1", "A2", "--splits", "dev",
            "--limit", "6", "--output", out]
    _refused(capsys, "eval/attribution.py", argv, bare / "nli" / "A1")  # sorted names: "same A1 seed 0" first
    assert not out.exists()
    load_script("eval/attribution.py").main([str(a) for a in argv + ALLOW])
    report = json.loads(out.read_text())
    assert report["unchecked_adapters"] == {f"same {a} seed 0": str(bare / "nli" / a) for a in ("A1", "A2")}
    assert report["annotators"]["A1"]["same"]["gain"]["gain"] == pytest.approx(0, abs=1e-9)  # zero adapters


def test_jury_with_unchecked_adapters(bare, corpus_lm, tmp_path, capsys):
    import dataclasses

    from capo.data.formats.jsonl import item_to_json
    from capo.data.formats.mjd_files import load_nli341

    items = [dataclasses.replace(item, annotations=[]) for item in load_nli341()[:2]]
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps(item_to_json(item)) + "\n" for item in items))
    out = tmp_path / "jury.jsonl"
    argv = ["--model", corpus_lm, "--explainers", bare / "{task}" / "{annotator}", "--annotators", "A1", "A2",
            "--dataset", data, "--output", out, "--heldout_only", "true"]
    _refused(capsys, "eval/jury.py", argv, bare / "nli" / "A1")
    assert not out.exists()
    report = load_script("eval/jury.py").main([str(a) for a in argv + ALLOW])
    assert report["unchecked_adapters"] == {f"explainer {a}": str(bare / "nli" / a) for a in ("A1", "A2")}
    assert report["items"] == 2 and "leaves out only what the explainers with a run manifest" in capsys.readouterr().out


def test_lewidi_prediction_with_unchecked_adapters(bare, corpus_lm, tmp_path, capsys):
    from capo.data.formats.lewidi import lewidi_split_path

    source = lewidi_split_path("ven", "test")
    rows = json.loads(source.read_text())
    split = tmp_path / "ven_two.json"
    split.write_text(json.dumps({key: rows[key] for key in list(rows)[:2]}))
    out = tmp_path / "ven.jsonl"
    argv = ["predict", "--dataset", "ven", "--split", split, "--decision", "0.5", "--model", corpus_lm,
            "--explainers", bare / "{task}" / "all", "--output", out]  # one conditioned adapter
    _refused(capsys, "eval/lewidi.py", argv, bare / "nli" / "all")
    assert not out.exists()
    report = load_script("eval/lewidi.py").main([str(a) for a in argv + ALLOW])
    assert report["unchecked_adapters"] == {"conditioned all": str(bare / "nli" / "all")} and out.exists()


# --- adapters really trained by the recipes ---------------------------------------------------------------------

FAST = ["--bf16", "false", "--gradient_checkpointing", "false", "--use_cpu", "true", "--report_to", "none",
        "--disable_tqdm", "true", "--max_length", "256", "--lora_r", "4", "--lora_alpha", "8",
        "--dataloader_num_workers", "0", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
        "--eval_split", "none", "--max_train_rows", "4", "--per_device_train_batch_size", "2", "--max_steps", "2"]


@pytest.fixture(scope="module")
def trained(corpus_lm, tmp_path_factory) -> Path:
    """root/seed0/{sft,capo}/nli/{A1,A2}: SFT adapters, and CAPO adapters started from them (2 steps each)."""
    root = tmp_path_factory.mktemp("trained")
    sft, capo = load_script("recipes/sft.py"), load_script("recipes/capo.py")
    for annotator in ("A1", "A2"):
        sft.main([str(a) for a in ("--model_name_or_path", corpus_lm, "--annotator", annotator, *FAST,
                                   "--output_dir", root / "seed0" / "sft" / "{task}" / "{annotator}")])
        capo.main([str(a) for a in ("--model_name_or_path", corpus_lm, "--annotator", annotator, *FAST,
                                    "--sft_adapter", root / "seed0" / "sft" / "{task}" / "{annotator}",
                                    "--output_dir", root / "seed0" / "capo" / "{task}" / "{annotator}")])
    return root


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "run_manifest.json").read_text())


@pytest.mark.slow
def test_manifests_record_the_training_items_exactly(trained):
    from capo.train.explainers import CapoArguments, build_pair_datasets, build_sft_datasets

    data = load_task_data("nli")
    for annotator in ("A1", "A2"):
        sft = _manifest(trained / "seed0" / "sft" / "nli" / annotator)["training_data"]
        args = CapoArguments(annotator=annotator, max_train_rows=4, eval_split=None)
        assert sft["item_ids"] == sorted(set(build_sft_datasets(args)[0]["id"]))
        assert (sft["dataset"], sft["task"], sft["split_seed"], sft["annotator"]) == ("varierr", "nli", 0, annotator)
        assert sft["dataset_sha256"] == data.content_sha256()
        assert sft["splits"]["test"] == sorted(data.split().test)
        capo = _manifest(trained / "seed0" / "capo" / "nli" / annotator)["training_data"]
        assert capo["item_ids"] == sorted(set(build_pair_datasets(args)[0]["id"]))
        assert capo["init_adapter"]["path"] == str(trained / "seed0" / "sft" / "nli" / annotator)
        assert capo["init_adapter"]["item_ids"] == sft["item_ids"]


@pytest.mark.slow
def test_generation_on_trained_adapters_follows_their_split_and_refuses_their_items(trained, corpus_lm, tmp_path,
                                                                                    capsys):
    from capo.generate.explanations import MERGED

    capo_a1 = trained / "seed0" / "capo" / "nli" / "A1"
    adapters = [f"A1={capo_a1}", f"A2={trained / 'seed0' / 'sft' / 'nli' / 'A2'}"]
    argv = lambda dataset, split, out: [
        "--model", str(corpus_lm), "--dataset", dataset, "--split", split, "--split_seed", "3", "--limit", "3",
        "--adapters", *adapters, "--dtype", "float32", "--batch_size", "4", "--max_new_tokens", "6",
        "--shard_size", "8", "--output_dir", str(out)]
    generate = load_script("recipes/generate.py")
    # nli341's --split_seed 3 cut is overridden: its items carry VariErr ids, held out by the adapters' split 0.
    generate.main(argv("nli341", "test", tmp_path / "gen"))
    records = [json.loads(line) for line in (tmp_path / "gen" / MERGED).read_text().splitlines()]
    varierr_test = set(load_task_data("nli").split().test)
    expected = [i.id for i in load_splits("nli341", split_seed=3).all_items() if i.id in varierr_test][:3]
    assert [r["id"] for r in records] == [i for i in expected for _ in range(2)]
    assert {r["annotator"] for r in records} == {"A1", "A2"}

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        generate.main(argv("varierr", "train", tmp_path / "x"))
    err = capsys.readouterr().err.strip()
    # --limit 3 keeps the first 3 training items: those the adapters trained on first.
    first3 = {i.id for i in load_task_data("nli").items("train")[:3]}
    n = len(training_items(_manifest(capo_a1)) & first3)
    assert exit_info.value.code == 2 and 0 < n and err == (
        f"error: adapter A1 ({capo_a1}) trained on {n} of these 3 items (it trained on varierr split seed 0; pick "
        "its dev or test items)")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_attribution_on_trained_adapters(trained, corpus_lm, tmp_path, capsys):
    from capo.evaluate.behaviour.attribution import attribution_report

    templates = {kind: str(trained / "seed{seed}" / kind / "{task}" / "{annotator}") for kind in ("sft", "capo")}
    out = tmp_path / "report.json"
    cli = load_script("eval/attribution.py")
    cli.main(["--model", str(corpus_lm), *[a for k, t in templates.items() for a in ("--adapter", f"{k}={t}")],
              "--annotators", "A1", "A2", "--dataset", "lewidi-ven", "--splits", "test", "--output", str(out)])
    report = json.loads(out.read_text())
    # LeWiDi VariErrNLI items, held out by the adapters' VariErr split 0: its 50 test items, none pre-trained on.
    assert report["items"] == 50 and "pre-train" not in capsys.readouterr().out
    for target in ("A1", "A2"):
        row = report["annotators"][target]
        assert 0 < row["items"] <= 50 and set(row) >= {"sft", "capo"}
        assert row["capo"]["control"]["model_of"] == ("A2" if target == "A1" else "A1")
    train = load_task_data("nli").items("train")[:10]
    with pytest.raises(DataError) as err:
        attribution_report(str(corpus_lm), templates, train, annotators=["A1", "A2"], log=lambda _: None)
    first = trained / "seed0" / "capo" / "nli" / "A1"  # names are checked in sorted order: "capo A1 seed 0" first
    n = len(training_items(_manifest(first)) & {i.id for i in train})
    assert str(err.value).startswith(f"adapter capo A1 seed 0 ({first}) trained on {n} of these 10 items")
