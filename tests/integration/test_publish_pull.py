"""``counterfactory publish`` and ``pull`` on a real build: the manifest, the index, what a repeat or a crash
leaves, and pulls from a real nginx (resumed after the server is killed, a flipped byte, a ``--where`` pull, over
HTTPS with the CA a user gives)."""
from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import re
import shutil
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset
import wids

from jobs import build as build_job
from jobs import cli
from pipeline import publish as publish_module
from pipeline.publish import REPOSITORY_MANIFEST, PublishError, publish_version
from pipeline.pull import PullConfig, PullError, pull
from transforms.io.files import PARTIAL_SUFFIX as PARTIAL
from pipeline.testing import write_candidate_set
from tests.nginx import nginx, nginx_tls  # noqa: F401  (the fixtures)


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("publish")
    candidates = write_candidate_set(base / "candidates", 24, seed=3)
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


# --------------------------------------------------------------------------- pull


def _samples(folder: pathlib.Path) -> dict[str, dict]:
    index = json.loads((folder / "shardindex.json").read_text())
    urls = [str(folder / entry["url"]) for entry in index["shardlist"]]
    return {s["__key__"]: s for s in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False)}


def _shard_sizes(version: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in version.glob("*.tar"))


@pytest.fixture
def served(version, nginx, tmp_path) -> pathlib.Path:
    """The version published into the folder nginx serves; returns the repository's copy of it."""
    publish_version(str(version), str(tmp_path / "www"))
    return tmp_path / "www" / "demo" / "v1"


def test_a_pull_killed_with_its_server_resumes_and_fetches_no_completed_file_again(version, served, nginx, tmp_path):
    target = tmp_path / "pulled"
    nginx.start(limit_rate="16k")  # nginx sends a second of it at once, then 16 kB/s: files over 16 kB are slow
    failure = []
    puller = threading.Thread(target=lambda: failure.append(_pull_failure(PullConfig(
        "demo@v1", nginx.url, str(target), workers=2))))
    puller.start()
    deadline = time.monotonic() + 20
    while not (len(_complete(target)) >= 4 and any(p.stat().st_size for p in target.rglob(f"*{PARTIAL}"))):
        assert time.monotonic() < deadline and puller.is_alive(), f"the pull ended before it could be interrupted: {failure}"
        time.sleep(0.02)
    nginx.kill()
    puller.join(timeout=30)
    assert failure and isinstance(failure[0], PullError), failure
    completed = _complete(target)
    partials = {str(p.relative_to(target))[:-len(PARTIAL)]: p.stat().st_size for p in target.rglob(f"*{PARTIAL}")}
    assert completed and partials and not (target / REPOSITORY_MANIFEST).exists()
    for path in completed:  # what has its name is verified
        assert (target / path).read_bytes() == (version / path).read_bytes()

    nginx.start()
    result = pull(PullConfig("demo@v1", nginx.url, str(target), workers=2))
    served_now = {row.path: row for row in nginx.served()}
    requested = {path.split("/demo/v1/", 1)[1] for path in served_now if "/demo/v1/" in path}
    assert not requested & set(completed)  # no completed file is fetched again
    for path, size in partials.items():
        if size:
            assert served_now[f"/demo/v1/{path}"].range == f"bytes={size}-"
    manifest = json.loads((served / REPOSITORY_MANIFEST).read_text())
    total = sum(entry["size"] for entry in manifest["files"])
    expected = total - sum((version / p).stat().st_size for p in completed) - sum(partials.values())
    assert nginx.bytes_served("") - _index_bytes(served_now) == expected == result.fetched_bytes
    assert result.kept_files == len(completed)
    assert _files(target) == {**_files(version), REPOSITORY_MANIFEST: (served / REPOSITORY_MANIFEST).read_bytes()}
    assert not list(target.rglob(f"*{PARTIAL}"))


def _pull_failure(config: PullConfig):
    try:
        pull(config)
    except Exception as error:  # noqa: BLE001  (the test inspects it)
        return error
    return None


def _complete(target: pathlib.Path) -> list[str]:
    return [str(p.relative_to(target)) for p in target.rglob("*") if p.is_file() and not p.name.endswith(PARTIAL)]


def _index_bytes(served_now) -> int:
    """Bytes of the index and the manifest, which every pull reads to know what to fetch."""
    return sum(row.bytes for path, row in served_now.items()
               if path.endswith(("/versions.json", f"/v1/{REPOSITORY_MANIFEST}")))


def test_a_flipped_byte_on_the_server_is_caught_refetched_once_then_the_pull_fails_naming_the_file(
        version, served, nginx, tmp_path, caplog):
    nginx.start()
    shard = sorted(served.glob("*.tar"))[1]
    good = shard.read_bytes()
    shard.write_bytes(good[:700] + bytes([good[700] ^ 0x01]) + good[701:])
    target = tmp_path / "pulled"
    with pytest.raises(PullError, match=f"{shard.name} fails verification against the manifest after fetching it "
                                        f"twice: sha256"):
        pull(PullConfig("demo@v1", nginx.url, str(target), workers=1))
    assert [row.status for row in nginx.served() if row.path.endswith(shard.name)] == [200, 200]
    assert not (target / shard.name).exists() and not (target / f"{shard.name}{PARTIAL}").exists()
    assert cli.main(["pull", "demo@v1", "--from", nginx.url, "--to", str(target)]) == 1
    assert f"pull failed: {shard.name} fails verification" in caplog.text

    shard.write_bytes(good)  # repaired on the server; and a byte flipped in a pulled file on this side
    kept = sorted(p for p in target.glob("*.parquet"))[0]
    kept.write_bytes(b"X" + kept.read_bytes()[1:])
    nginx.start()
    pull(PullConfig("demo@v1", nginx.url, str(target)))
    assert _files(target) == {**_files(version), REPOSITORY_MANIFEST: (served / REPOSITORY_MANIFEST).read_bytes()}
    requested = {row.path.rsplit("/", 1)[1] for row in nginx.served()}
    assert {shard.name, kept.name} <= requested and len(requested) < len(_files(version))


def test_a_where_pull_holds_exactly_the_selected_samples_and_reads_fewer_bytes(version, served, nginx, tmp_path):
    nginx.start()
    rows = pa.concat_tables([pq.read_table(p) for p in sorted(version.glob("shard-*.parquet"))]).to_pylist()
    cut = sorted(row["quality"] for row in rows)[len(rows) // 2]
    expected = {row["key"] for row in rows if row["quality"] >= cut and row["label"] in ("blob", "cup")}
    assert 0 < len(expected) < len(rows)
    target = tmp_path / "pulled"
    where = f'quality >= {cut!r} and label in ("blob", "cup")'
    assert cli.main(["pull", "demo@v1", "--from", nginx.url, "--to", str(target), "--where", where]) == 0

    originals = _samples(version)
    pulled = _samples(target)
    assert set(pulled) == expected
    for key, sample in pulled.items():
        assert {k: v for k, v in sample.items() if not k.startswith("__")} == \
            {k: v for k, v in originals[key].items() if not k.startswith("__")}
    assert len(wids.ShardListDataset(str(target / "shardindex.json"))) == len(expected)
    metadata = pa.concat_tables([pq.read_table(p) for p in sorted(target.glob("shard-*.parquet"))]).to_pylist()
    assert {row["key"] for row in metadata} == expected
    for row in metadata:  # the pulled Parquet locates each sample in the pulled tar
        tar = (target / row["shard"]).read_bytes()
        assert tar[row["tar_offset"]: row["tar_offset"] + row["tar_length"]] == \
            _piece(version, {r["key"]: r for r in rows}[row["key"]])
    manifest = json.loads((target / REPOSITORY_MANIFEST).read_text())
    assert manifest["pulled"]["where"] == where and manifest["pulled"]["samples"] == len(expected)
    assert {e["path"] for e in manifest["files"]} == {str(p.relative_to(target)) for p in target.rglob("*")
                                                      if p.is_file() and p.name != REPOSITORY_MANIFEST}
    assert not (target / ".pull").exists()
    shard_bytes = nginx.bytes_served(".tar")
    assert shard_bytes == sum(r["tar_length"] for r in rows if r["key"] in expected) < _shard_sizes(version)
    assert all(row.range for row in nginx.served() if row.path.endswith(".tar"))
    total = sum(e["size"] for e in json.loads((served / REPOSITORY_MANIFEST).read_text())["files"])
    assert nginx.bytes_served() < total

    before = _files(target)
    nginx.stop()
    nginx.start()  # counts afresh: the same pull again checks the tars it wrote, a sample at a time, and keeps them
    again = pull(PullConfig("demo@v1", nginx.url, str(target), where=where))
    assert not [row for row in nginx.served() if row.path.endswith(".tar")] and _files(target) == before
    assert again.samples == len(expected) and again.kept_files >= len(list(target.glob("shard-*.tar")))


def _piece(version: pathlib.Path, row: dict) -> bytes:
    return (version / row["shard"]).read_bytes()[row["tar_offset"]: row["tar_offset"] + row["tar_length"]]


def test_shards_glob_latest_and_a_local_repository(version, tmp_path, caplog):
    repo = tmp_path / "repo"
    publish_version(str(version), str(repo))
    newer = tmp_path / "out" / "demo" / "v2"
    shutil.copytree(version, newer)
    publish_version(str(newer), str(repo))
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pipeline.pull"):
        assert cli.main(["pull", "demo@latest", "--from", str(repo), "--to", str(tmp_path / "latest")]) == 0
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pulled ") and "ETA" in r.getMessage()]
    assert 1 <= len(progress) <= 1 + (time.monotonic() - started) / 2  # a line every 2 s at most, and the last
    assert re.fullmatch(r"pulled 1\.\d / 1\.\d MB, (\d+) / \1 files, [\d.]+ MB/s, ETA 0 s", progress[-1]), progress
    assert json.loads((tmp_path / "latest" / REPOSITORY_MANIFEST).read_text())["version"] == "v2"
    assert _files(tmp_path / "latest") == {**_files(version),
                                           REPOSITORY_MANIFEST: (repo / "demo" / "v2" / REPOSITORY_MANIFEST).read_bytes()}

    result = pull(PullConfig("demo@v1", str(repo), str(tmp_path / "some"), shards="shard-*-0[0-2].tar"))
    names = sorted(p.name for p in (tmp_path / "some").glob("shard-*"))
    assert names == [f"shard-000000-0{i}.{ext}" for i in range(3) for ext in ("parquet", "tar")]
    assert set(_samples(tmp_path / "some")) == {
        row["key"] for i in range(3) for row in pq.read_table(version / f"shard-000000-0{i}.parquet").to_pylist()}
    assert result.samples == len(_samples(tmp_path / "some"))
    assert (tmp_path / "some" / "lineage.json").read_bytes() == (version / "lineage.json").read_bytes()
    with pytest.raises(PullError, match="no published version 'v7'.*published: v1, v2"):
        pull(PullConfig("demo@v7", str(repo), str(tmp_path / "none")))


def test_a_manifest_naming_paths_outside_the_version_is_refused_before_anything_is_fetched(tmp_path):
    dataset = tmp_path / "repo" / "demo"
    (dataset / "v1").mkdir(parents=True)
    manifest = json.dumps({"format_version": 1, "dataset": "demo", "version": "v1", "files": [
        {"path": "../../escaped.txt", "size": 2, "sha256": hashlib.sha256(b"hi").hexdigest()},
        {"path": "/etc/escaped", "size": 2, "sha256": hashlib.sha256(b"hi").hexdigest()}]}).encode()
    (dataset / "v1" / REPOSITORY_MANIFEST).write_bytes(manifest)
    (dataset / "versions.json").write_text(json.dumps({"latest": "v1", "versions": [
        {"version": "v1", "manifest_sha256": hashlib.sha256(manifest).hexdigest()}]}))
    with pytest.raises(PullError, match="paths outside the version: '../../escaped.txt', '/etc/escaped'"):
        pull(PullConfig("demo@v1", str(tmp_path / "repo"), str(tmp_path / "a" / "b" / "pulled")))
    assert not list(tmp_path.rglob("escaped*"))


def test_a_where_pull_checks_every_sample_against_its_sample_sha256(version, served, nginx, tmp_path, caplog):
    nginx.start()
    rows = pq.read_table(sorted(served.glob("shard-*.parquet"))[0]).to_pylist()
    victim = rows[0]
    shard = served / victim["shard"]
    data = bytearray(shard.read_bytes())
    data[victim["tar_offset"] + 512 + 10] ^= 0x01  # inside its first member's bytes (after one 512-byte header)
    shard.write_bytes(bytes(data))
    with pytest.raises(PullError, match=f"{victim['shard']}: samples {victim['key']} fail their sample_sha256 after "
                                        f"fetching them twice"):
        pull(PullConfig("demo@v1", nginx.url, str(tmp_path / "pulled"), where="quality > -1", workers=1))
    assert len([row for row in nginx.served() if row.path.endswith(victim["shard"])]) == 2
    assert not (tmp_path / "pulled" / victim["shard"]).exists()


def test_a_truncated_file_on_the_server_is_refetched_once_then_the_pull_fails_naming_it(served, nginx, tmp_path):
    nginx.start()
    shard = sorted(served.glob("*.tar"))[0]
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    with pytest.raises(PullError, match=f"{shard.name} fails verification against the manifest after fetching it "
                                        f"twice: the server's file has {size // 2} bytes, the manifest {size}"):
        pull(PullConfig("demo@v1", nginx.url, str(tmp_path / "pulled"), workers=1))
    assert len([row for row in nginx.served() if row.path.endswith(shard.name)]) == 2
    assert not list((tmp_path / "pulled").glob(f"{shard.name}*"))


def test_an_https_pull_trusts_the_ca_a_user_gives_and_an_untrusted_server_fails_in_one_line(
        version, nginx_tls, tmp_path, monkeypatch, caplog):
    publish_version(str(version), str(tmp_path / "www"))
    nginx_tls.start()
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert cli.main(["pull", "demo@v1", "--from", nginx_tls.url, "--to", str(tmp_path / "untrusted")]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"pull failed: {nginx_tls.url}: the server's certificate is not trusted (unable to get local "
                      "issuer certificate): pass the CA that signed it in SSL_CERT_FILE (or --ca_bundle FILE)"]
    assert not list(tmp_path.glob("untrusted/*")) and not nginx_tls.served()

    whole = tmp_path / "whole"
    assert cli.main(["pull", "demo@v1", "--from", nginx_tls.url, "--to", str(whole),
                     "--ca_bundle", str(nginx_tls.tls.ca)]) == 0
    manifest = (tmp_path / "www" / "demo" / "v1" / REPOSITORY_MANIFEST).read_bytes()
    assert _files(whole) == {**_files(version), REPOSITORY_MANIFEST: manifest}

    monkeypatch.setenv("SSL_CERT_FILE", str(nginx_tls.tls.ca))  # urllib's default context reads it, as curl does
    nginx_tls.start()
    rows = pa.concat_tables([pq.read_table(p) for p in sorted(version.glob("shard-*.parquet"))]).to_pylist()
    cut = sorted(row["quality"] for row in rows)[len(rows) // 2]
    result = pull(PullConfig("demo@v1", nginx_tls.url, str(tmp_path / "part"), where=f"quality >= {cut!r}"))
    assert set(_samples(tmp_path / "part")) == {row["key"] for row in rows if row["quality"] >= cut}
    assert result.samples < len(rows) and all(row.range for row in nginx_tls.served() if row.path.endswith(".tar"))


def test_a_ca_bundle_is_for_https_repositories_and_must_be_a_readable_bundle(version, tmp_path, caplog):
    publish_version(str(version), str(tmp_path / "repo"))
    assert cli.main(["pull", "demo@v1", "--from", str(tmp_path / "repo"), "--to", str(tmp_path / "a"),
                     "--ca_bundle", str(tmp_path / "ca.pem")]) == 1
    assert f"pull failed: --ca_bundle is for https:// repositories, not {tmp_path / 'repo'}" in caplog.text
    (tmp_path / "ca.pem").write_text("not a certificate")
    for bundle, why in ((tmp_path / "ca.pem", r"not a PEM bundle of certificates \(NO_CERTIFICATE_OR_CRL_FOUND\)"),
                        (tmp_path / "missing.pem", "No such file or directory")):
        with pytest.raises(ValueError, match=f"^--ca_bundle {re.escape(str(bundle))}: {why}$"):
            pull(PullConfig("demo@v1", "https://127.0.0.1:9", str(tmp_path / "b"), ca_bundle=str(bundle)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
