"""The one run engine (`capo.runner`): sharding, a real SIGKILL and resume, run signatures that cover content, and
the same behaviour through every job that uses it (generation, model explanations, MJD)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest
from conftest import ROOT, load_script, run_script

from capo import runner
from capo.errors import DataError
from capo.runner import KILL_AFTER_ENV, SIGNATURE_FILE, ShardedRun, fingerprint, shard_path


@dataclass(frozen=True)
class Square:
    n: int
    note: str = ""

    @property
    def key(self) -> str:
        return f"n{self.n}"


def _square(units):
    return [{"key": u.key, "square": u.n * u.n} for u in units]


def _run(out, units=None, **signature) -> ShardedRun:
    units = units if units is not None else [Square(n) for n in range(10)]
    return ShardedRun(out, units, shard_size=3, signature={"power": 2, **signature}, record_key=lambda r: r["key"])


class Counting:
    def __init__(self) -> None:
        self.units = 0

    def __call__(self, units):
        self.units += len(units)
        return _square(units)


def test_processes_take_every_kth_shard_and_merge_to_the_one_process_result(tmp_path):
    one = _run(tmp_path / "one")
    assert one.run(_square) == [0, 1, 2, 3]  # 10 units in shards of 3, 3, 3, 1
    expected = one.merge(into="merged.jsonl")
    assert [r["square"] for r in expected] == [n * n for n in range(10)]
    three = _run(tmp_path / "three")
    for index in (2, 0, 1):
        assert three.run(_square, process_index=index, num_processes=3) == list(range(index, 4, 3))
        if index != 1:
            assert three.merge() is None  # not finished: nothing merged
    assert three.merge(into="merged.jsonl") == expected
    assert (tmp_path / "three" / "merged.jsonl").read_bytes() == (tmp_path / "one" / "merged.jsonl").read_bytes()
    # A shard that does not hold its units' records (a folder reused by hand) is refused, never merged.
    path = shard_path(tmp_path / "one", 1)
    path.write_text(path.read_text().replace('"n4"', '"n40"'))
    with pytest.raises(DataError, match="shard-00001.jsonl: shard does not hold the records"):
        _run(tmp_path / "one").merge()


_KILLED_SCRIPT = """
import sys
from dataclasses import dataclass
from capo.runner import ShardedRun

@dataclass(frozen=True)
class Square:
    n: int
    note: str = ""

    @property
    def key(self):
        return f"n{self.n}"

run = ShardedRun(sys.argv[1], [Square(n) for n in range(10)], shard_size=3, signature={"power": 2},
                 record_key=lambda r: r["key"])
run.run(lambda units: [{"key": u.key, "square": u.n * u.n} for u in units])
"""


def test_a_real_sigkill_keeps_finished_shards_and_the_restart_does_only_the_rest(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, KILL_AFTER_ENV: "2", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", _KILLED_SCRIPT, str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = _run(out)
    assert run.done() == [0, 1] and (out / SIGNATURE_FILE).exists()
    before = {k: run.path(k).stat().st_mtime_ns for k in run.done()}
    stray = run.path(2).with_name(".shard-00002.jsonl.x1y2.tmp")  # what a kill inside an atomic write leaves
    stray.write_text('{"key": "n6", "squ')
    work = Counting()
    assert run.run(work) == [2, 3] and work.units == 3 + 1
    assert {k: run.path(k).stat().st_mtime_ns for k in before} == before  # finished shards untouched
    assert [r["square"] for r in run.merge()] == [n * n for n in range(10)]
    assert not stray.exists()


def test_a_restart_with_other_settings_or_other_units_is_refused_in_one_located_line(tmp_path):
    out = tmp_path / "run"
    _run(out).run(_square, process_index=0, num_processes=2)  # half done, as after a kill
    with pytest.raises(DataError) as err:
        _run(out, power=3).run(_square)
    assert str(err.value).startswith(f"{out}: field 'power': holds a run with other settings (power; power: 2 there")
    # Same keys, other content (an edited item): the units hash differs.
    edited = [Square(n, note="edited" if n == 7 else "") for n in range(10)]
    with pytest.raises(DataError, match="field 'units'"):
        _run(out, edited).run(_square)
    with pytest.raises(DataError, match="field 'shard_size'"):
        ShardedRun(out, edited, shard_size=5, signature={"power": 2}, record_key=lambda r: r["key"]).check()
    assert _run(out).run(_square, process_index=1, num_processes=2) == [1, 3]  # the same run resumes


def test_nothing_is_written_before_the_first_shard_is_done(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataError, match="field 'shard_size': shard size must be at least 1"):
        ShardedRun(out, [Square(1)], shard_size=0, signature={}, record_key=lambda r: r["key"])

    def failing(units):
        raise DataError("the model cannot do this", field="model")

    with pytest.raises(DataError, match="cannot do this"):
        _run(out).run(failing)
    assert not out.exists()  # a run that fails while starting leaves no folder: a corrected rerun is not refused
    with pytest.raises(DataError, match="item n3: duplicate unit"):
        _run(out, [Square(3), Square(3)])


def test_shards_without_a_signature_are_refused(tmp_path):
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "mjd-00000-of-00001.jsonl").write_text("{}\n")  # e.g. left by an older version
    with pytest.raises(DataError, match=f"{SIGNATURE_FILE}"):
        _run(out).run(_square)


def test_fingerprints_follow_content_not_names(tmp_path, monkeypatch):
    data = tmp_path / "items.jsonl"
    data.write_text('{"id": "a"}\n')
    first = fingerprint(str(data))
    assert first.startswith(f"{data}@sha256:")
    data.write_text('{"id": "a"}\n')
    assert fingerprint(str(data)) == first  # rewritten, same bytes
    data.write_text('{"id": "b"}\n')
    assert fingerprint(str(data)) != first
    assert fingerprint("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"  # hub id: as given

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    (model / "tokenizer_config.json").write_text('{"chat_template": "a"}')
    base = fingerprint(str(model))
    (model / "README.md").write_text("notes")
    (model / "trainer_state.json").write_text("{}")
    (model / "checkpoint-1").mkdir()
    assert fingerprint(str(model)) == base  # training-run records do not shape outputs
    (model / "tokenizer_config.json").write_text('{"chat_template": "b"}')
    assert fingerprint(str(model)) != base  # another chat template: other prompts

    # Files above FULL_HASH_BYTES: size, modification time and the first and last MiB.
    monkeypatch.setattr(runner, "FULL_HASH_BYTES", 1024)
    monkeypatch.setattr(runner, "EDGE_BYTES", 512)
    weights = model / "model.safetensors"
    large = fingerprint(str(model))
    weights.write_bytes(b"\0" * 4095 + b"\1")  # the last byte: within the last EDGE_BYTES
    changed = fingerprint(str(model))
    assert changed != large
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint(str(model)) != changed  # same bytes, newer file: taken as replaced (the safe side)


# --- through the jobs -----------------------------------------------------------------------------------------------


def _one_error_line(capsys, main, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("script", "argv", "field"), [
    ("recipes/generate.py", ["--max_new_tokens", "0"], "max_new_tokens"),
    ("recipes/generate.py", ["--shard_size", "0"], "shard_size"),
    ("recipes/generate.py", ["--limit", "0"], "limit"),
    ("recipes/generate.py", ["--limit", "-3"], "limit"),
    ("recipes/generate.py", ["--batch_size", "0"], "batch_size"),
    ("recipes/mjd.py", ["--config", "recipes/configs/mjd_tiny.yaml", "--items_per_chunk", "0"], "items_per_chunk"),
    ("recipes/mjd.py", ["--config", "recipes/configs/mjd_tiny.yaml", "--limit", "0"], "limit"),
    ("recipes/mjd.py", ["--config", "recipes/configs/mjd_tiny.yaml", "--dtype", "float8"], "dtype"),
    ("recipes/model_explanations.py", ["--shard_size", "0"], "shard_size"),
    ("recipes/model_explanations.py", ["--max_new_tokens", "0"], "max_new_tokens"),
    ("recipes/model_explanations.py", ["--limit", "0"], "limit"),
    ("recipes/model_explanations.py", ["--label_free_order", "e", "e", "n"], "label_free_order"),
])
def test_invalid_values_are_one_line_and_leave_no_run_folder(script, argv, field, tmp_path, capsys):
    out = tmp_path / "run"
    line = _one_error_line(capsys, load_script(script).main, [*argv, "--output_dir", out])
    assert f"field '{field}'" in line
    assert not out.exists()


def _copy_model(corpus_lm, path):
    shutil.copytree(corpus_lm, path)
    return path


def _replace_model(path):
    """The same architecture and tokenizer with other weights, saved over `path` (a model updated in place)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.5)
    model.save_pretrained(path)


@pytest.mark.slow
def test_generation_refuses_an_edited_data_file_and_a_replaced_model(corpus_lm, tmp_path):
    from capo.data.formats.jsonl import item_to_json
    from capo.data.formats.varierr import load_varierr
    from capo.generate.explanations import MERGED, GenerateArguments, run_generation

    model = _copy_model(corpus_lm, tmp_path / "model")
    data = tmp_path / "items.jsonl"
    rows = [item_to_json(item) for item in load_varierr()[:3]]
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    data.write_text(lines)
    args = GenerateArguments(model=str(model), dataset=str(data), split=None, output_dir=str(tmp_path / "out"),
                             dtype="float32", max_new_tokens=3, shard_size=1)
    assert run_generation(args)["merged"]
    full = (tmp_path / "out" / MERGED).read_bytes()
    shard_path(args.output_dir, 2).unlink()  # the state a kill during the last shard leaves
    (tmp_path / "out" / MERGED).unlink()
    rows[0]["inputs"]["premise"] += " Edited."
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"field 'dataset': holds a run with other settings \(dataset, units;"):
        run_generation(args)
    data.write_text(lines)  # the original file back: the run resumes
    summary = run_generation(args)
    assert summary["this_process"]["records"] == 1 and (tmp_path / "out" / MERGED).read_bytes() == full
    _replace_model(model)
    with pytest.raises(DataError, match=r"field 'model': holds a run with other settings \(model;"):
        run_generation(args)


@pytest.mark.slow
def test_model_explanations_resume_after_a_kill_and_refuse_a_replaced_model(corpus_lm, tmp_path, capsys):
    model = _copy_model(corpus_lm, tmp_path / "model")
    argv = ["--model", model, "--limit", "2", "--dtype", "float32", "--max_new_tokens", "12", "--shard_size", "3"]
    main = load_script("recipes/model_explanations.py").main
    main([str(a) for a in argv + ["--output_dir", tmp_path / "full"]])
    out = tmp_path / "run"
    killed = run_script("recipes/model_explanations.py", *argv, "--output_dir", out, env={KILL_AFTER_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [shard_path(out, k).exists() for k in range(2)] == [True, False]
    summary = main([str(a) for a in argv + ["--output_dir", out]])
    assert summary["throughput"]["records"] == 3  # only the unfinished shard was generated
    for name in ("generations.jsonl", *summary["sets"]):
        assert (out / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    _replace_model(model)
    line = _one_error_line(capsys, main, argv + ["--output_dir", out])
    assert f"error: {out}: field 'model': holds a run with other settings" in line


@pytest.mark.slow
def test_mjd_resumes_after_a_kill_and_refuses_a_changed_output_option_or_explanation_file(corpus_lm, tmp_path, capsys):
    from capo.data.formats.common import MODEL_EXPLANATIONS_DIR

    explanations = tmp_path / "Label-Free-first.json"
    shutil.copy(MODEL_EXPLANATIONS_DIR / "Llama3" / "Label-Free-first.json", explanations)
    argv = ["--config", "recipes/configs/mjd_tiny_parallel.yaml", "--model_name_or_path", corpus_lm, "--limit", "4",
            "--items_per_chunk", "2", "--explanations", explanations, "--batch_size", "24"]
    main = load_script("recipes/mjd.py").main
    main([str(a) for a in argv + ["--output_dir", tmp_path / "full"]])
    out = tmp_path / "run"
    killed = run_script("recipes/mjd.py", *argv, "--output_dir", out, env={KILL_AFTER_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [shard_path(out, k).exists() for k in range(2)] == [True, False] and not (out / "mjd.jsonl").exists()
    # Turning raw scores on for the rest would leave the first shard's rows without them: refused.
    line = _one_error_line(capsys, main, argv + ["--output_dir", out, "--save_raw_scores", "true"])
    assert f"error: {out}: field 'save_raw_scores': holds a run with other settings" in line
    line = _one_error_line(capsys, main, argv + ["--output_dir", out, "--items_per_chunk", "1"])
    assert "field 'items_per_chunk': holds a run with other settings (items_per_chunk, shard_size;" in line
    original = explanations.read_bytes()
    explanations.write_bytes(original.replace(b"The", b"A", 1))
    line = _one_error_line(capsys, main, argv + ["--output_dir", out])
    assert "field 'explanations'" in line
    explanations.write_bytes(original)
    summary = main([str(a) for a in argv + ["--output_dir", out]])
    assert summary["shards_scored_here"] == 1
    assert (out / "mjd.jsonl").read_bytes() == (tmp_path / "full" / "mjd.jsonl").read_bytes()
