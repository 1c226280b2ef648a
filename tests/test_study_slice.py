"""The study slice (issue 26): its data variants (training halves, pseudo-annotators), checkpoint manifests, and one
tiny slice end to end on the corpus LM."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from conftest import call_script

from capo.data.datasets import load_task_data
from capo.data.variants import half_ids, pseudo_annotators, train_half
from capo.errors import DataError


@pytest.fixture(scope="module")
def nli():
    return load_task_data("nli", "varierr", 0)


def test_training_halves_are_disjoint_seeded_and_cover_train(nli):
    ids = [item.id for item in nli.items("train")]
    zero, one = half_ids(ids, 0, 0), half_ids(ids, 1, 0)
    assert not zero & one and zero | one == set(ids) and abs(len(zero) - len(one)) <= 1
    assert half_ids(list(reversed(ids)), 0, 0) == zero  # independent of order
    assert half_ids(ids, 0, 1) != zero  # another seed, another half
    half = train_half(nli, 0, 0)
    assert {item.id for item in half.items("train")} == zero
    assert half.items("test") == nli.items("test") and half.content_sha256() != nli.content_sha256()
    with pytest.raises(DataError, match="unknown half"):
        half_ids(ids, 2, 0)


def test_pseudo_annotators_permute_ids_within_items(nli):
    pseudo = pseudo_annotators(nli, 7)
    changed = 0
    for real, fake in zip(nli.all_items(), pseudo.all_items(), strict=True):
        assert real.id == fake.id and real.annotators() == fake.annotators()
        # the same responses, only under other names; each name still one real annotator's responses on the item
        assert Counter((a.label, a.explanation) for a in real.annotations) == \
            Counter((a.label, a.explanation) for a in fake.annotations)
        rename = {a.annotator: b.annotator for a, b in zip(real.annotations, fake.annotations, strict=True)}
        assert len(set(rename.values())) == len(rename)
        for a, b in zip(real.annotations, fake.annotations, strict=True):
            assert set(b.votes) == {rename.get(v, v) for v in a.votes}  # votes follow their voters
        changed += any(k != v for k, v in rename.items())
    assert changed > 0.5 * len(nli.all_items())  # 23 of 24 permutations of 4 move someone
    again = pseudo_annotators(nli, 7)
    assert [a.annotator for i in again.all_items() for a in i.annotations] == \
        [a.annotator for i in pseudo.all_items() for a in i.annotations]


def test_slice_arguments_are_checked_before_any_work(tmp_path, capsys):
    from capo.study.slice import SliceArguments

    with pytest.raises(DataError, match="multiple of save_steps"):
        SliceArguments(sft_steps=10, save_steps=4)
    with pytest.raises(DataError, match="unknown part"):
        SliceArguments(part="everything")
    result = call_script("recipes/study_slice.py", "--part", "controls", "--work_dir", str(tmp_path / "w"),
                         "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "run --part core" in result.stderr and "checkpoint-10" in result.stderr
    assert not (tmp_path / "out").exists()
    result = call_script("recipes/study_slice.py", "--part", "capo", "--seed", "3", "--work_dir",
                         str(tmp_path / "w"), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "(or sft) --seed 3" in result.stderr and "seed3" in result.stderr
    assert not (tmp_path / "out").exists()
    assert SliceArguments(part="capo_sft_weight", seed=2).name == "nli_capo_sft_weight_s2"
    with pytest.raises(DataError, match="fifty_shot_limit"):
        SliceArguments(fifty_shot_limit=0)


def test_the_gpu_config_keeps_the_protocol_and_runs_fifty_shots_on_every_item():
    from capo.cli import parse_arguments
    from capo.study.slice import Slice, SliceArguments

    (gpu,) = parse_arguments((SliceArguments,), ["--config", "recipes/configs/study_slice_gpu.yaml", "--part",
                                                 "prompting"])
    cpu = SliceArguments(part="prompting")
    protocol = ("model", "sft_steps", "capo_steps", "save_steps", "batch_size", "max_new_tokens", "sft_config",
                "capo_config", "pseudo_seed", "split_seed", "limit")
    assert {k: getattr(gpu, k) for k in protocol} == {k: getattr(cpu, k) for k in protocol}
    assert gpu.output_dir != cpu.output_dir  # its own folder and report
    limits = {s.name: s.limit for s in Slice(gpu, log=lambda _: None).train()}
    assert limits == {"fs4": None, "fs16": None, "fs50": None}
    assert {s.name: s.limit for s in Slice(cpu, log=lambda _: None).train()}["fs50"] == 12


@pytest.mark.heavy  # ~60 s alone: 16 corpus-LM trainings, twice (make test-all)
def test_a_tiny_slice_end_to_end(corpus_lm, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--model", str(corpus_lm), "--task", "nli", "--seed", "0", "--limit", "2", "--sft_steps", "2",
            "--capo_steps", "1", "--save_steps", "1", "--batch_size", "2", "--max_new_tokens", "8",
            "--dtype", "float32", "--generate_batch_size", "8", "--work_dir", str(work), "--output_dir", str(out)]
    result = call_script("recipes/study_slice.py", *argv)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = out / "nli_core_s0"
    meta = json.loads((folder / "slice.json").read_text())
    assert {n: (s["kind"], s["step"]) for n, s in meta["sources"].items()} == {
        "sft_step1": ("sft_curve", 1), "sft_step2": ("sft", 2), "sft_matched": ("sft_matched", 3),
        "capo": ("capo", 3), "pseudo_capo": ("pseudo_capo", 3)}
    assert len(meta["items"]) == 2 and set(meta["judges"]) == {"raw", "reduced", "expl_only", "disjoint"}

    # every SFT checkpoint is an adapter with the run's manifest and its step; training used half 0 only
    sft = work / "nli" / "seed0" / "sft" / "A1"
    for step in (1, 2):
        manifest = json.loads((sft / f"checkpoint-{step}" / "run_manifest.json").read_text())
        assert manifest["checkpoint_step"] == step
    record = json.loads((sft / "run_manifest.json").read_text())["training_data"]
    nli = load_task_data("nli", "varierr", 0)
    all_train = [item.id for item in nli.items("train")]
    assert set(record["item_ids"]) <= half_ids(all_train, 0, 0)
    assert not set(record["item_ids"]) & half_ids(all_train, 1, 0)
    pseudo = json.loads((work / "nli" / "seed0" / "pseudo_capo" / "A1" / "run_manifest.json").read_text())
    assert "pseudo-annotators" in pseudo["training_data"]["dataset"]

    rows = [json.loads(line) for line in (folder / "responses.jsonl").read_text().splitlines()]
    by_source = Counter(r["source"] for r in rows)
    assert all(by_source[s] == 8 for s in meta["sources"])  # 2 items x 4 targets
    assert by_source["human"] == sum(1 for item in nli.items("test")[:2] for a in item.annotations
                                     if a.annotator and a.explanation.strip())
    for row in rows:
        if row["parsed"]:
            for vector in row["judge"].values():
                assert len(vector) == 4 and np.isclose(np.logaddexp.reduce(vector), 0, atol=1e-3)
        else:
            assert "judge" not in row
    labels = [json.loads(line) for line in (folder / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 5 * 8 and all(np.isclose(sum(r["probs"]), 1, atol=1e-4) for r in labels)

    # started again: every adapter is kept (generation runs resume from their finished shards), same results
    again = call_script("recipes/study_slice.py", *argv)
    assert again.returncode == 0, again.stderr[-3000:]
    meta2 = json.loads((folder / "slice.json").read_text())
    training = {k for k in meta["wall_s"] if k.startswith(("sft ", "capo ", "pseudo"))}
    assert len(training) == 16 and not meta["wall_s_earlier"]
    # kept jobs report the time they took when they ran (training: the trainer's runtime), and say so
    assert training | {f"labels {s}" for s in meta["sources"]} <= set(meta2["wall_s_earlier"])
    assert all(meta2["wall_s"][k] > 0 for k in training)
    assert (folder / "responses.jsonl").read_text() == "\n".join(json.dumps(r, ensure_ascii=False)
                                                                  for r in rows) + "\n"

    # the core in its three parts (sft, then capo and pseudo) from a fresh work folder: the same sources, responses,
    # judge scores and label probabilities, and the report reads the three folders as one seed
    from capo.study.report import HUMAN, read_slices

    parts = tmp_path / "parts"
    for part in ("capo", "sft", "capo", "pseudo"):  # capo first: refused, nothing written
        step = call_script("recipes/study_slice.py", *argv[:-4], "--part", part, "--work_dir",
                           str(tmp_path / "work_parts"), "--output_dir", str(parts))
        if not (parts / "nli_sft_s0").exists():
            assert step.returncode == 2 and "run --part core (or sft)" in step.stderr and not parts.exists()
            continue
        assert step.returncode == 0, step.stderr[-3000:]
    split = [json.loads(line) for part in ("sft", "capo", "pseudo")
             for line in (parts / f"nli_{part}_s0" / "responses.jsonl").read_text().splitlines()]
    key = lambda r: (r["source"], r["target"], r["item_id"])
    model_rows = lambda rs: sorted((r for r in rs if r["source"] != HUMAN), key=key)
    text = lambda rs: [(key(r), r["parsed"], r.get("label"), r.get("explanation")) for r in model_rows(rs)]
    assert text(split) == text(rows)
    for a, b in zip(model_rows(split), model_rows(rows), strict=True):
        assert a.get("judge", {}).keys() == b.get("judge", {}).keys()
        for judge in a.get("judge", {}):
            assert np.allclose(a["judge"][judge], b["judge"][judge], atol=1e-4)
    split_labels = sorted((json.loads(line) for part in ("sft", "capo", "pseudo")
                           for line in (parts / f"nli_{part}_s0" / "labels.jsonl").read_text().splitlines()), key=key)
    assert [key(r) for r in split_labels] == [key(r) for r in sorted(labels, key=key)]
    assert np.allclose([r["probs"] for r in split_labels], [r["probs"] for r in sorted(labels, key=key)], atol=1e-5)
    # one pair ablation on its own, from the sft part's checkpoints
    step = call_script("recipes/study_slice.py", *argv[:-4], "--part", "capo_sft_weight", "--work_dir",
                       str(tmp_path / "work_parts"), "--output_dir", str(parts))
    assert step.returncode == 0, step.stderr[-3000:]
    ablation = json.loads((parts / "nli_capo_sft_weight_s0" / "slice.json").read_text())
    assert set(ablation["sources"]) == {"capo_sft_weight"} and set(ablation["wall_s"]) == {
        "capo_sft_weight A1", "capo_sft_weight A2", "capo_sft_weight A3", "capo_sft_weight A4",
        "generate capo_sft_weight", "labels capo_sft_weight", "total"}
    seed = read_slices(parts)["nli"][0]
    assert set(seed.sources) == set(meta["sources"]) | {"capo_sft_weight"} and len(seed.slices) == 4
    assert len(seed.responses[HUMAN]) == by_source["human"]  # each part repeats the real responses: counted once
