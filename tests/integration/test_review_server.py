"""The review server as users run it (``counterfactory review`` in its own process), attacked over real HTTP.

Covers issue 17's safety list: token then cookie, CSRF on every state change, no request
path reaching the filesystem (``..``, absolute, URL-encoded), escaped labels, a ``kill -9``
during a stream of decisions losing none that was acknowledged, and two reviewers
deciding the same sample at once.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset

from pipeline.testing import write_candidate_set
from schemas.sample import sample_digest
from tests.integration.test_build import _zero_bytes_of_a_src_jpg
from transforms.io.shards import metadata_path

REPO = pathlib.Path(__file__).resolve().parents[2]
EVIL_LABEL = '<script>alert("label")</script>'
SECRET = "secret-beside-the-dataset"


def relabel(folder: pathlib.Path, labels: list[str]) -> None:
    """Give the objects of a candidate set these labels, in key order (rewrites its tars, digests and manifest)."""
    manifest = json.loads((folder / "shardindex.json").read_text())
    position = 0
    for entry in manifest["shardlist"]:
        tar = folder / entry["url"]
        samples = list(webdataset.WebDataset(str(tar), shardshuffle=False))
        buffer = io.BytesIO()
        digests = {}
        with webdataset.TarWriter(buffer) as writer:
            for sample in samples:
                meta = json.loads(sample["json"])
                meta["detection"]["label"] = labels[position % len(labels)]
                position += 1
                fields = {"json": json.dumps(meta).encode(),
                          **{k: v for k, v in sample.items() if not k.startswith("__") and k != "json"}}
                digests[sample["__key__"]] = sample_digest(fields)
                writer.write({"__key__": sample["__key__"], **fields})
        tar.write_bytes(buffer.getvalue())
        entry["md5sum"], entry["filesize"] = hashlib.md5(buffer.getvalue()).hexdigest(), len(buffer.getvalue())
        metadata = pq.read_table(metadata_path(str(tar)))  # as a writer would: the digests of what the tar holds
        recorded = pa.array([digests[key] for key in metadata.column("key").to_pylist()], pa.string())
        column = metadata.schema.get_field_index("sample_sha256")
        pq.write_table(metadata.set_column(column, metadata.schema.field(column), recorded),
                       metadata_path(str(tar)))
    (folder / "shardindex.json").write_text(json.dumps(manifest))


def damage_behind_the_manifest(folder: pathlib.Path) -> str:
    """The issue's 400 zeroed bytes in one sample's src.jpg, the manifest re-listed after (its md5s cannot see it).

    Only the per-sample digest recorded at write time tells; returns the damaged sample's key.
    """
    damaged = _zero_bytes_of_a_src_jpg(next(folder.glob("shard-*.tar")))
    manifest = json.loads((folder / "shardindex.json").read_text())
    for entry in manifest["shardlist"]:
        data = (folder / entry["url"]).read_bytes()
        entry.update(md5sum=hashlib.md5(data).hexdigest(), filesize=len(data))
    (folder / "shardindex.json").write_text(json.dumps(manifest))
    return damaged


class Server:
    """``counterfactory review FOLDER --db DB`` in a child process; ``url`` is the token URL it printed."""

    def __init__(self, folder: pathlib.Path, db: pathlib.Path) -> None:
        self.db = db
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "--log-level", "WARNING", "review", str(folder), "--db", str(db)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("http://"):
            self.process.kill()
            raise RuntimeError(f"the server printed {line!r}: {self.process.stderr.read()}")
        self.url = line.strip()
        self.base = self.url.split("/?")[0]

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process.stdout.close()
        self.process.stderr.close()


def login(server: Server, reviewer: str, url: str | None = None) -> tuple[httpx.Client, str]:
    """A client with a session (from a token URL) and a reviewer name; returns it and its CSRF token."""
    client = httpx.Client(base_url=server.base, timeout=30)
    assert client.get(url or server.url).status_code == 303
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/api/login", json={"reviewer": reviewer}, headers={"X-CSRF-Token": csrf}).status_code == 200
    return client, csrf


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    folder = write_candidate_set(tmp_path_factory.mktemp("set") / "demo", 40, seed=7)
    relabel(folder, ["cat", EVIL_LABEL, "cup"])
    (folder / "secret.txt").write_text(SECRET)
    return folder


@pytest.fixture(scope="module")
def server(dataset, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "review.sqlite"
    (db.parent / "secret.txt").write_text(SECRET)
    server = Server(dataset, db)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ann(server) -> tuple[httpx.Client, str]:
    return login(server, "ann")


def test_the_token_opens_one_session_once_and_nothing_works_without_one(server, ann):
    anonymous = httpx.Client(base_url=server.base)
    for path in ("/", "/review", "/dashboard", "/api/next", "/static/review.js", "/login"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.get(server.url).status_code == 403  # ann used it already
    assert anonymous.get("/?token=guess").status_code == 403
    client, _ = ann
    cookie = client.cookies.jar
    assert any(c.name == "cf_session" and c.has_nonstandard_attr("HttpOnly") for c in cookie)
    assert client.get("/review").status_code == 200


def test_state_changes_need_the_sessions_csrf_token(server, ann):
    client, csrf = ann
    key = client.get("/api/next").json()["key"]
    decision = {"key": key, "action": "accept"}
    assert client.post("/api/decide", json=decision).status_code == 403
    assert client.post("/api/decide", json=decision, headers={"X-CSRF-Token": "x" + csrf}).status_code == 403
    assert client.post("/api/undo").status_code == 403
    assert client.post("/api/invite").status_code == 403
    ok = client.post("/api/decide", json=decision, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200 and ok.json()["key"] == key
    assert client.post("/api/undo", headers={"X-CSRF-Token": csrf}).json()["key"] == key


@pytest.mark.parametrize("path", [
    "/img/../secret.txt", "/img/..%2F..%2Fsecret.txt/src.jpg", "/img/%2e%2e/%2e%2e%2fsecret.txt",
    "/img/KEY/..%2Fsecret.txt", "/img/KEY/%2Fetc%2Fpasswd", "/img//etc/passwd", "/img/KEY/json",
    "/img/KEY/src.jpg%00.png", "/img/%2Fetc%2Fpasswd/src.jpg", "/static/..%2F..%2Freview%2Fapp.py",
    "/static/%2e%2e/secret.txt", "/img/KEY/src.jpg?v=..%2F..%2Fsecret", "/img/KEY/..%252F..%252Fsecret.txt",
])
def test_no_request_path_reaches_the_filesystem(server, ann, path):
    client, _ = ann
    key = client.get("/api/next").json()["key"]
    response = client.get(path.replace("KEY", key))
    assert response.status_code in (400, 404), (path, response.status_code)
    assert SECRET not in response.text and "root:" not in response.text


@pytest.mark.parametrize("raw", ["/img/../../secret.txt", "/img/KEY/../../secret.txt", "/static/../../review.sqlite",
                                 "/img/KEY/../../../../../../etc/passwd", "/static/../app.py"])
def test_dot_segments_sent_raw_reach_no_file(server, ann, raw):
    """The same, with the path on the wire exactly as written (an HTTP client would normalise the dots away)."""
    client, _ = ann
    key = client.get("/api/next").json()["key"]
    host, port = server.base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", raw.replace("KEY", key), headers={"Cookie": f"cf_session={client.cookies['cf_session']}"})
    response = connection.getresponse()
    body = response.read().decode("utf-8", "replace")
    connection.close()
    assert response.status in (400, 404), (raw, response.status)
    assert SECRET not in body and "root:" not in body and "import" not in body


def test_images_come_from_the_index_with_caching_headers(server, ann, dataset):
    client, _ = ann
    sample = client.get(f"/api/sample/{client.get('/api/next').json()['key']}").json()
    source = client.get(sample["source"])
    tar = {s["__key__"]: s for s in webdataset.WebDataset(str(next(dataset.glob("*.tar"))), shardshuffle=False)}
    assert source.headers["content-type"] == "image/jpeg" and source.content == tar[sample["key"]]["src.jpg"]
    assert "immutable" in source.headers["cache-control"] and source.headers["etag"]
    assert client.get(sample["source"], headers={"If-None-Match": source.headers["etag"]}).status_code == 304
    thumb = client.get(sample["candidates"][0]["thumb"])
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content != source.content
    pictures = server.db.parent / "review.cache" / "pictures"
    assert len(list(pictures.rglob("*.thumb"))) == 1  # made once, on disk beside the database
    assert client.get(sample["candidates"][0]["thumb"]).content == thumb.content
    overlay = client.get(sample["mask"])
    assert overlay.headers["content-type"] == "image/png" and overlay.content[:4] == b"\x89PNG"


def test_labels_are_escaped_everywhere_they_are_shown(server, ann):
    client, _ = ann
    pages = [client.get("/dashboard").text, client.get("/queue?queue=near").text,
             client.get("/queue", params={"queue": "label", "label": EVIL_LABEL}).text]
    for page in pages:
        assert EVIL_LABEL not in page
    assert "&lt;script&gt;alert(&#34;label&#34;)&lt;/script&gt;" in pages[0]
    assert pages[2].count("&lt;script&gt;") >= 13  # 40 objects, every third one
    csp = client.get("/review").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_two_reviewers_deciding_one_sample_at_once_are_both_recorded(server, ann):
    client, csrf = ann
    invite = client.post("/api/invite", headers={"X-CSRF-Token": csrf}).json()["url"]
    bea, bea_csrf = login(server, "bea", invite)
    key = client.get("/api/next").json()["key"]
    barrier = threading.Barrier(2)
    statuses = []

    def decide(who: httpx.Client, token: str, action: dict) -> None:
        barrier.wait()
        statuses.append(who.post("/api/decide", json={"key": key, **action}, headers={"X-CSRF-Token": token}).status_code)

    threads = [threading.Thread(target=decide, args=(client, csrf, {"action": "accept"})),
               threading.Thread(target=decide, args=(bea, bea_csrf, {"action": "reject", "reason": "wrong_mask"}))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]
    sample = client.get(f"/api/sample/{key}").json()
    assert sorted((d["reviewer"], d["action"]) for d in sample["decisions"]) == [("ann", "accept"), ("bea", "reject")]


def test_a_bad_decision_is_refused_before_anything_is_written(server, ann):
    client, csrf = ann
    key = client.get("/api/next").json()["key"]
    headers = {"X-CSRF-Token": csrf}
    for body in ({"key": "nope", "action": "accept"}, {"key": key, "action": "maybe"},
                 {"key": key, "action": "reject"}, {"key": key, "action": "reject", "reason": "ugly"},
                 {"key": key, "action": "pick", "candidate": 99}, {"key": key, "action": "pick", "candidate": True},
                 {"key": key, "action": "accept", "candidate": 1}):
        assert client.post("/api/decide", json=body, headers=headers).status_code in (400, 404), body
    assert client.post("/api/decide", content=b"[1]", headers=headers).status_code == 400


def test_kill_9_during_a_stream_of_decisions_loses_none_that_was_acknowledged(dataset, tmp_path):
    db = tmp_path / "review.sqlite"
    server = Server(dataset, db)
    client, csrf = login(server, "kim")
    key = client.get("/api/next").json()["key"]
    acknowledged = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                response = client.post("/api/decide", json={"key": key, "action": "accept"},
                                       headers={"X-CSRF-Token": csrf})
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                acknowledged.append(response.json()["id"])

    thread = threading.Thread(target=stream)
    thread.start()
    while len(acknowledged) < 40:
        time.sleep(0.01)
    server.kill()
    stop.set()
    thread.join()
    connection = sqlite3.connect(db)
    ids = {row[0] for row in connection.execute("SELECT id FROM decisions")}
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()
    assert set(acknowledged) <= ids and len(ids) <= len(acknowledged) + 1  # at most the one in flight
    restarted = Server(dataset, db)
    try:
        again, _ = login(restarted, "kim")
        assert len([d for d in again.get(f"/api/sample/{key}").json()["decisions"]]) == len(ids)
    finally:
        restarted.stop()
        server.stop()


def test_a_sample_that_differs_from_its_recorded_digest_is_never_shown_and_the_dashboard_counts_it(tmp_path):
    """Before: review checked the shards' md5s only, so a sample damaged behind its manifest was shown for judging."""
    folder = write_candidate_set(tmp_path / "demo", 6, seed=5)
    damaged = damage_behind_the_manifest(folder)
    server = Server(folder, tmp_path / "review.sqlite")
    try:
        client, _ = login(server, "ann")
        assert client.get(f"/api/sample/{damaged}").status_code == 404
        assert damaged not in client.get("/queue?queue=near").text
        dashboard = client.get("/dashboard").text
        assert re.search(r'id="corrupt"><b>1</b> object\s+left out', dashboard), dashboard
        assert "of 5 objects decided" in dashboard
    finally:
        server.stop()
