"""``counterfactory publish`` on a real build: the manifest, the index, and what a repeat or a crash leaves."""
from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import pytest

from jobs import build as build_job
from jobs import cli
from pipeline import publish as publish_module
from pipeline.publish import REPOSITORY_MANIFEST, PublishError, publish_version
from pipeline.testing import write_candidate_set


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("publish")
    candidates = write_candidate_set(base / "candidates", 12, seed=3)
    build_job.run([f"--candidates={candidates}", f"--output={base / 'out'}", "--name=demo", "--version=v1"])
    return base / "out" / "demo" / "v1"


def test_published_version_is_every_file_with_its_sha256_and_the_index_lists_it(version, tmp_path):
    assert cli.main(["publish", str(version), "--to", str(tmp_path / "repo")]) == 0
    target = tmp_path / "repo" / "demo" / "v1"
    manifest = json.loads((target / REPOSITORY_MANIFEST).read_text())
    published = _files(target)
    assert published.pop(REPOSITORY_MANIFEST)
    assert published == _files(version)
    assert {e["path"]: (e["size"], e["sha256"]) for e in manifest["files"]} == {
        path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in published.items()}
    assert any(path.endswith(".tar") for path in published) and any(path.endswith(".parquet") for path in published)
    index = json.loads((tmp_path / "repo" / "demo" / "versions.json").read_text())
    assert index["latest"] == "v1" and [v["version"] for v in index["versions"]] == ["v1"]
    assert index["versions"][0]["manifest_sha256"] == hashlib.sha256(
        (target / REPOSITORY_MANIFEST).read_bytes()).hexdigest()


def test_publishing_again_is_a_no_op_if_identical_and_refused_if_not(version, tmp_path, caplog):
    repo = tmp_path / "repo"
    publish_version(str(version), str(repo))
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*")}
    assert publish_version(str(version), str(repo)).unchanged
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*")} == before
    changed = tmp_path / "changed" / "demo" / "v1"
    changed.parent.mkdir(parents=True)

    shutil.copytree(version, changed)
    (changed / "lineage.json").write_text((changed / "lineage.json").read_text() + " ")
    with pytest.raises(PublishError, match="already published with other content"):
        publish_version(str(changed), str(repo))
    assert cli.main(["publish", str(changed), "--to", str(repo)]) == 2
    assert "already published with other content" in caplog.text


def test_a_publisher_killed_half_way_leaves_no_visible_version_and_a_rerun_completes_it(version, tmp_path,
                                                                                          monkeypatch):
    repo = tmp_path / "repo"
    real_publish, written = publish_module.publish, []

    def killed_after_three(path, source):
        if len(written) == 3:
            raise KeyboardInterrupt("killed")
        written.append(path)
        real_publish(path, source)

    monkeypatch.setattr(publish_module, "publish", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        publish_version(str(version), str(repo))
    assert not (repo / "demo" / "v1" / REPOSITORY_MANIFEST).exists()
    assert not (repo / "demo" / "versions.json").exists()
    monkeypatch.setattr(publish_module, "publish", real_publish)
    assert not publish_version(str(version), str(repo)).unchanged
    assert json.loads((repo / "demo" / "versions.json").read_text())["latest"] == "v1"


def test_an_unfinished_version_is_refused(tmp_path):
    (tmp_path / "demo" / "v9").mkdir(parents=True)
    with pytest.raises(PublishError, match="not a finished version"):
        publish_version(str(tmp_path / "demo" / "v9"), str(tmp_path / "repo"))
