import json

import numpy as np
import pytest
from conftest import call_script

from capo.data.distributions import read_distributions, write_distributions
from capo.evaluate.distributions.compare import baseline_distributions, join
from capo.evaluate.distributions.metrics import kl_per_item


@pytest.fixture(scope="module")
def baselines_json():
    proc = call_script("eval/distributions.py", "--baselines", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_baselines_json_has_every_source_and_metric(baselines_json):
    assert list(baselines_json) == ["uniform", "label_prior", "mnli_onehot", "mnli_dist", "varierr_dist", "chaosnli"]
    for row in baselines_json.values():
        assert set(row) == {"kl", "jsd", "tvd", "dcorr"}
    assert baselines_json["chaosnli"] == {"kl": 0.0, "jsd": 0.0, "tvd": 0.0, "dcorr": 1.0}
    assert baselines_json["uniform"]["dcorr"] == 0.0 == baselines_json["label_prior"]["dcorr"]  # constants
    # The ChaosNLI-dev label prior beats uniform on the 341 items (the audit's C11 check: KL 0.330, JSD 0.281).
    assert baselines_json["label_prior"]["kl"] == pytest.approx(0.3304, abs=1e-4)
    assert baselines_json["label_prior"]["jsd"] < baselines_json["uniform"]["jsd"]
    # The human label distributions of 5 MNLI annotators are closer to ChaosNLI than a one-hot gold label.
    assert baselines_json["mnli_dist"]["kl"] < baselines_json["mnli_onehot"]["kl"]
    assert baselines_json["mnli_dist"]["jsd"] < baselines_json["uniform"]["jsd"]


def test_baseline_kl_matches_an_independent_computation(baselines_json):
    from scipy.stats import entropy

    dists = baseline_distributions()
    ids = sorted(dists["human"])
    h = np.clip([dists["human"][i] for i in ids], 1e-10, 1)
    m = np.clip([dists["varierr_dist"][i] for i in ids], 1e-10, 1)
    expected = np.mean([entropy(a / a.sum(), b / b.sum()) for a, b in zip(h, m)])
    assert baselines_json["varierr_dist"]["kl"] == pytest.approx(expected)


def test_human_vs_model_files_and_plot(tmp_path):
    dists = baseline_distributions()
    write_distributions(tmp_path / "h.jsonl", dists["human"])
    write_distributions(tmp_path / "m.jsonl", dict(reversed(list(dists["mnli_dist"].items()))))  # order must not matter
    proc = call_script("eval/distributions.py", "--human", tmp_path / "h.jsonl", "--model", tmp_path / "m.jsonl",
                      "--json", "--plot", tmp_path / "p.png")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert list(report) == ["m", "uniform", "label_prior"]  # the constants on the same items
    report = report["m"]
    _, h, m = join(read_distributions(tmp_path / "h.jsonl"), read_distributions(tmp_path / "m.jsonl"))
    assert report["kl"] == pytest.approx(kl_per_item(h, m).mean())
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_readable_table(tmp_path):
    proc = call_script("eval/distributions.py", "--baselines", "--csv", tmp_path / "t.csv")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == "| source | kl | jsd | tvd | dcorr |"
    assert "`label_prior` predicts the mean HJD of ChaosNLI dev" in proc.stdout  # the caption under the table
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "source,kl,jsd,tvd,dcorr"


def test_partial_model_file_is_scored_only_when_allowed_and_says_on_how_many(tmp_path):
    dists = baseline_distributions()
    write_distributions(tmp_path / "h.jsonl", dists["human"])
    part = dict(list(dists["mnli_dist"].items())[:100])
    write_distributions(tmp_path / "m.jsonl", part)
    refused = call_script("eval/distributions.py", "--human", tmp_path / "h.jsonl", "--model", tmp_path / "m.jsonl")
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: {tmp_path / 'm.jsonl'}: covers 100 of the "
                                                                 f"341 items in {tmp_path / 'h.jsonl'}")
    proc = call_script("eval/distributions.py", "--human", tmp_path / "h.jsonl", "--model", tmp_path / "m.jsonl",
                      "--allow_partial", "true", "--json", "--csv", tmp_path / "t.csv")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["m"]
    assert (report["items"], report["human_items"]) == (100, 341)
    h = np.array([dists["human"][i] for i in sorted(part)])
    assert report["kl"] == pytest.approx(kl_per_item(h, np.array([part[i] for i in sorted(part)])).mean())
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "source,kl,jsd,tvd,dcorr,items,human_items"
    assert (tmp_path / "t.csv").read_text().splitlines()[1].endswith(",100,341")
