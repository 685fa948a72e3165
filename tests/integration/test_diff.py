"""``counterfactory diff`` of two real builds that differ only in their thresholds."""
from __future__ import annotations

import json
import logging
import pathlib

import pytest

from jobs import cli
from pipeline.diff import diff_versions
from pipeline.publish import publish_version
from pipeline.testing import write_candidate_set
from schemas.sample import Field
from tests.integration.test_build import candidate_samples, expected_kept, pair_samples, run_build
from tests.nginx import nginx, nginx_tls  # noqa: F401  (the fixtures)
from transforms.thresholds import DEFAULT_THRESHOLDS

V2_THRESHOLDS = {"seam": 0.35, "ssim_outside": 0.9}  # stricter on one score, looser on another


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    base = tmp_path_factory.mktemp("diff")
    candidates = write_candidate_set(base / "candidates", 24, seed=5)
    v1 = run_build(base / "out", "v1", candidates)
    v2 = run_build(base / "out", "v2", candidates, extra=["--thresholds={seam: 0.35, ssim_outside: 0.9}"])
    return candidates, v1, v2


def test_diff_lists_exactly_the_samples_the_thresholds_changed(builds, capsys):
    candidates, v1, v2 = builds
    objects = candidate_samples(candidates)
    kept1 = expected_kept(objects, DEFAULT_THRESHOLDS)
    kept2 = expected_kept(objects, {**DEFAULT_THRESHOLDS, **V2_THRESHOLDS})
    assert kept2 - kept1 and kept1 - kept2  # the test needs both
    old, new = pair_samples(v1), pair_samples(v2)
    assert (set(old), set(new)) == (kept1, kept2)

    def choice(sample):  # what the thresholds decide for an object: its candidate and that candidate's scores
        return json.loads(sample[Field.JSON])["candidate"]

    changed = {key for key in kept1 & kept2 if choice(old[key]) != choice(new[key])}
    assert changed  # a stricter seam bound moved some objects to another candidate
    result = diff_versions(str(v1), str(v2))
    assert set(result.added) == kept2 - kept1 and set(result.removed) == kept1 - kept2
    assert set(result.changed) == changed
    assert set(result.restamped) == (kept1 & kept2) - changed and result.identical == 0
    lineage = {change.path: (change.old, change.new) for change in result.lineage}
    assert lineage.pop("thresholds.seam.max") == (0.45, 0.35)
    assert lineage.pop("thresholds.ssim_outside.min") == (0.95, 0.9)
    assert set(lineage) <= {"config_sha256", "content_sha256", "samples"}  # nothing else differs
    funnel = {(row.stage, row.step): (row.old, row.new) for row in result.funnel}
    assert funnel[("build", "passed_thresholds")] == (len(kept1), len(kept2))
    assert funnel[("build", "candidate_objects")] == (len(objects), len(objects))

    assert cli.main(["diff", str(v1), str(v2), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == result.to_json()
    assert cli.main(["diff", str(v1), str(v2)]) == 0
    text = capsys.readouterr().out
    assert f"{len(kept2 - kept1)} added, {len(kept1 - kept2)} removed, {len(changed)} changed" in text
    assert "thresholds.seam.max: 0.45 -> 0.35" in text


def test_diff_of_published_versions_over_http_reads_no_shard(builds, nginx, tmp_path):
    _, v1, v2 = builds
    for version in (v1, v2):
        publish_version(str(version), str(tmp_path / "www"))
    nginx.start()
    remote = diff_versions("demo@v1", "demo@latest", nginx.url)
    local = diff_versions(str(v1), str(v2))
    assert (remote.old, remote.new) == ("demo@v1", "demo@v2")
    assert {k: v for k, v in remote.to_json().items() if k not in ("old", "new")} == \
        {k: v for k, v in local.to_json().items() if k not in ("old", "new")}
    assert not [row for row in nginx.served() if row.path.endswith(".tar")]
    same = diff_versions("demo@v2", "demo@v2", str(tmp_path / "www"))
    assert (same.added, same.removed, same.changed, same.restamped, same.lineage) == ((), (), (), (), ())
    assert same.identical == len(pair_samples(v2))


def test_diff_over_https_trusts_the_ca_a_user_gives_and_names_an_untrusted_server(builds, nginx_tls, tmp_path,
                                                                                   monkeypatch, caplog):
    _, v1, v2 = builds
    for version in (v1, v2):
        publish_version(str(version), str(tmp_path / "www"))
    nginx_tls.start()
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert cli.main(["diff", "demo@v1", "demo@latest", "--from", nginx_tls.url]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].endswith("SSL_CERT_FILE (or --ca_bundle FILE)")
    assert "no dataset" not in errors[0]
    remote = diff_versions("demo@v1", "demo@latest", nginx_tls.url, ca_bundle=str(nginx_tls.tls.ca))
    assert (remote.old, remote.new) == ("demo@v1", "demo@v2") and remote.added == diff_versions(str(v1), str(v2)).added
    caplog.clear()
    assert cli.main(["diff", str(v1), str(v2), "--ca_bundle", str(nginx_tls.tls.ca)]) == 1
    assert "--ca_bundle is for https:// repositories" in caplog.text
