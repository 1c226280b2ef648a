"""Sampled generation (issue 26, item 4): temperature / num_samples / top_p / seed in `recipes/generate.py`.

Greedy stays the default (one record per (item, annotator), `sample` 0); sampling writes `num_samples` records per
(item, annotator) in a fixed order, reproducibly from `seed` (also after a real kill and a resume, and whichever
process writes a shard); bad or contradictory options are refused while parsing, and a resume with other sampling
settings is refused like any other changed setting.
"""

from __future__ import annotations

import json
import signal

import pytest
from conftest import load_script, run_script

from capo.errors import DataError
from capo.generate.explanations import MERGED, GenerateArguments, run_generation
from capo.runner import KILL_AFTER_ENV, shard_path

pytestmark = pytest.mark.slow

TARGETS = ("A1", "A2")  # zero-shot prompting baselines: both targets see the very same prompt


@pytest.fixture(scope="module")
def argv(corpus_lm):
    # 2 held-out items x 2 targets; shards of 4 records. batch_size 2: a prompt's samples fall in several batches.
    return ["--model", str(corpus_lm), "--dataset", "varierr", "--split", "test", "--limit", "2",
            "--targets", *TARGETS, "--dtype", "float32", "--batch_size", "2", "--max_new_tokens", "12",
            "--shard_size", "4"]


SAMPLED = ["--temperature", "1.0", "--num_samples", "3", "--seed", "7"]


def read(out) -> list[dict]:
    return [json.loads(line) for line in (out / MERGED).read_text().splitlines()]


@pytest.fixture(scope="module")
def sampled(argv, tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled")
    summary = load_script("recipes/generate.py").main(argv + SAMPLED + ["--output_dir", str(out)])
    return out, summary


def test_greedy_default_is_one_record_per_item_and_annotator_with_sample_0(argv, tmp_path):
    main = load_script("recipes/generate.py").main
    summary = main(argv + ["--output_dir", str(tmp_path / "greedy")])
    records = read(tmp_path / "greedy")
    ids = list(dict.fromkeys(r["id"] for r in records))
    assert summary["records"] == len(records) == 4 and len(ids) == 2
    assert [(r["id"], r["annotator"], r["sample"]) for r in records] == [(i, a, 0) for i in ids for a in TARGETS]
    # greedy decoding: the two targets' identical prompts get the same answer
    for i in ids:
        assert len({r["raw"] for r in records if r["id"] == i}) == 1
    config = json.loads((tmp_path / "greedy" / "run_config.json").read_text())
    assert (config["temperature"], config["num_samples"], config["top_p"], config["seed"]) == (0.0, 1, 1.0, 0)
    # the defaults given explicitly are the same run: nothing left to do
    assert main(argv + ["--temperature", "0", "--num_samples", "1", "--output_dir", str(tmp_path / "greedy")]
                )["this_process"]["records"] == 0


def test_sampling_writes_num_samples_records_per_item_and_annotator_reproducibly(argv, sampled, tmp_path):
    out, summary = sampled
    records = read(out)
    ids = list(dict.fromkeys(r["id"] for r in records))
    assert summary["records"] == len(records) == 12 and summary["shards"] == 3
    assert [(r["id"], r["annotator"], r["sample"]) for r in records] == [
        (i, a, k) for i in ids for a in TARGETS for k in range(3)]
    for record in records:
        assert 1 <= record["generated_tokens"] <= 12
    # every sample is its own draw: across a prompt's 6 rows (2 targets x 3 samples) the texts differ
    for i in ids:
        assert len({r["raw"] for r in records if r["id"] == i}) > 1
    config = json.loads((out / "run_config.json").read_text())
    assert (config["temperature"], config["num_samples"], config["top_p"], config["seed"]) == (1.0, 3, 1.0, 7)
    main = load_script("recipes/generate.py").main
    # the same seed again: the same texts, byte for byte
    main(argv + SAMPLED + ["--output_dir", str(tmp_path / "again")])
    assert (tmp_path / "again" / MERGED).read_bytes() == (out / MERGED).read_bytes()
    # another seed: other draws
    main(argv + ["--temperature", "1.0", "--num_samples", "3", "--seed", "8", "--output_dir", str(tmp_path / "s8")])
    assert [r["raw"] for r in read(tmp_path / "s8")] != [r["raw"] for r in records]


def test_a_killed_sampled_run_resumes_to_the_identical_records(argv, sampled, tmp_path):
    full, _ = sampled
    out = tmp_path / "run"
    killed = run_script("recipes/generate.py", *argv, *SAMPLED, "--output_dir", out, env={KILL_AFTER_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [shard_path(out, k).exists() for k in range(3)] == [True, False, False]
    summary = load_script("recipes/generate.py").main(argv + SAMPLED + ["--output_dir", str(out)])
    assert summary["this_process"]["records"] == 8  # only the 2 unfinished shards were sampled
    assert (out / MERGED).read_bytes() == (full / MERGED).read_bytes()


def test_a_shards_samples_do_not_depend_on_the_process_that_writes_it(argv, sampled, tmp_path):
    from trl import TrlParser

    full, _ = sampled
    (args,) = TrlParser((GenerateArguments,)).parse_args_and_config(
        args=argv + SAMPLED + ["--output_dir", str(tmp_path)])
    assert run_generation(args, process_index=1, num_processes=2)["merged"] is None
    assert run_generation(args, process_index=0, num_processes=2)["merged"]
    assert (tmp_path / MERGED).read_bytes() == (full / MERGED).read_bytes()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_more_than_one_sample_without_temperature_is_refused_by_the_entry_point(argv, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        load_script("recipes/generate.py").main(argv + ["--num_samples", "2", "--output_dir", str(out)])
    assert exit_.value.code == 2
    line = one_error_line(capsys)
    assert "field 'num_samples'" in line and "temperature > 0" in line
    assert not out.exists()  # refused while parsing: nothing written


@pytest.mark.parametrize("changes, field", [
    ({"num_samples": 2}, "num_samples"),
    ({"num_samples": 0, "temperature": 1.0}, "num_samples"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
    ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
    ({"top_p": 0.9}, "top_p"),  # greedy decoding would ignore it
])
def test_sampling_options_are_checked_while_parsing(changes, field):
    with pytest.raises(DataError) as err:
        GenerateArguments(**{"output_dir": "x", **changes})
    assert f"field '{field}'" in str(err.value)
    GenerateArguments(output_dir="x", temperature=0.7, top_p=0.9, num_samples=4, seed=1)  # a valid combination


@pytest.mark.parametrize("changes, field", [
    (["--temperature", "0.5"], "temperature"),
    (["--num_samples", "2"], "num_samples"),
    (["--top_p", "0.9"], "top_p"),
    (["--seed", "8"], "seed"),
])
def test_a_resume_with_other_sampling_settings_is_refused(argv, sampled, changes, field, capsys):
    out, _ = sampled
    before = (out / MERGED).read_bytes()
    settings = dict(zip(SAMPLED[::2], SAMPLED[1::2], strict=True))
    settings.update(dict(zip(changes[::2], changes[1::2], strict=True)))
    with pytest.raises(SystemExit) as exit_:
        load_script("recipes/generate.py").main(
            argv + [x for pair in settings.items() for x in pair] + ["--output_dir", str(out)])
    assert exit_.value.code == 2
    line = one_error_line(capsys)
    assert "holds a run with other settings" in line and f"field '{field}'" in line
    assert (out / MERGED).read_bytes() == before


def test_a_greedy_run_resumed_with_sampling_is_refused(argv, tmp_path, capsys):
    main = load_script("recipes/generate.py").main
    out = tmp_path / "greedy"
    main(argv + ["--limit", "1", "--output_dir", str(out)])
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--limit", "1", "--temperature", "1.0", "--output_dir", str(out)])
    assert exit_.value.code == 2
    assert "field 'temperature'" in one_error_line(capsys)
