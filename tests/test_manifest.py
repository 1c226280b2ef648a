import json
from dataclasses import dataclass

from capo.data.formats.common import VARIERR_PATH
from capo.manifest import file_sha256, write_manifest


@dataclass
class Args:
    annotator: str = "A2"
    beta: float = 0.1


def test_manifest_records_config_versions_commit_and_hashes(tmp_path):
    manifest = write_manifest(tmp_path, config={"script": Args(), "lr": 1e-4}, data_files=[VARIERR_PATH], seed=7)
    on_disk = json.loads((tmp_path / "run_manifest.json").read_text())
    assert on_disk == manifest
    assert on_disk["config"] == {"script": {"annotator": "A2", "beta": 0.1}, "lr": 1e-4}
    assert on_disk["seed"] == 7 and on_disk["packages"]["torch"].startswith("2.")
    assert on_disk["data_files"][str(VARIERR_PATH)] == file_sha256(VARIERR_PATH) and len(file_sha256(VARIERR_PATH)) == 64
    # The tests run inside the project's git checkout, so the commit is known.
    assert len(on_disk["git_commit"].split("-")[0]) == 40
