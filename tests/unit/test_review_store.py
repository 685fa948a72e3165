"""The decisions store on a real SQLite file over a real index: queues, undo, export, audit figures, threads."""
from __future__ import annotations

import dataclasses
import sqlite3
import threading

import pytest

from jobs.review import dataset_source
from pipeline.testing import write_candidate_set
from review.index import open_index
from review.store import Action, DecisionStore, Queue, export_all
from schemas.decisions import decisions_jsonl, parse_decisions
from schemas.keys import candidate_key
from transforms.thresholds import Thresholds

OBJECTS = 30
#: Thresholds on the scores synthetic sets have (pinned: the build defaults may add scores they lack).
BOUNDS = {"ssim_outside": 0.95, "change_inside": 0.05, "redetect_score": 0.3, "seam": 0.45}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    folder = write_candidate_set(tmp_path_factory.mktemp("set") / "demo", OBJECTS, seed=5)
    source = dataclasses.replace(dataset_source(str(folder), {}), thresholds=Thresholds(BOUNDS))
    index = open_index(source, str(tmp_path_factory.mktemp("cache")))
    yield index
    index.close()


@pytest.fixture()
def store(index, tmp_path) -> DecisionStore:
    return DecisionStore(str(tmp_path / "review.sqlite"), index.version, index.path)


def keys_in_order(index, column: str, where: str = "1") -> list[str]:
    connection = sqlite3.connect(index.path)
    try:
        return [r[0] for r in connection.execute(f"SELECT key FROM samples WHERE {where} ORDER BY {column}, key")]
    finally:
        connection.close()


def test_the_database_is_in_wal_mode_with_one_row_per_decision(index, store):
    store.record(keys_in_order(index, "closeness")[0], Action.ACCEPT, "ann", "near")
    connection = sqlite3.connect(store.path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("SELECT reviewer, action, dataset FROM decisions").fetchall() == [
        ("ann", "accept", store.dataset)]


def test_near_queue_walks_closest_first_and_skips_what_anyone_decided(index, store):
    order = keys_in_order(index, "closeness")
    assert store.next_key("ann", Queue()) == order[0]
    store.record(order[0], Action.REJECT, "bob", "near", reason="wrong_mask")
    store.record(order[1], Action.SKIP, "bob", "near")
    assert store.next_key("ann", Queue()) == order[1]  # bob's skip is not a decision for ann
    assert store.next_key("bob", Queue()) == order[2]
    assert store.next_key("ann", Queue(), after=order[5]) == order[6]
    assert store.next_key("ann", Queue(), after=order[-1]) == order[1]  # past the end: from the start


def test_audit_queue_is_shared_and_holds_only_what_the_thresholds_keep(index, store):
    audit = keys_in_order(index, "audit", "passed = 1")
    assert 0 < len(audit) < OBJECTS
    store.record(audit[0], Action.ACCEPT, "bob", "audit")
    assert store.next_key("ann", Queue("audit")) == audit[0]
    assert store.next_key("bob", Queue("audit")) == audit[1]


def test_pages_cover_the_queue_once_in_order(index, store):
    seen, after = [], None
    while True:
        page = store.page(Queue(), after, size=7)
        if not page:
            break
        seen += [row["key"] for row in page]
        after = page[-1]["key"]
    assert seen == keys_in_order(index, "closeness")
    assert store.page(Queue("label", label="no such label")) == []
    low = [row["key"] for row in store.page(Queue("score", score="seam", high=0.4), size=100)]
    assert low == keys_in_order(index, "closeness", "seam <= 0.4") and 0 < len(low) < OBJECTS


def test_undo_marks_the_reviewers_latest_decision_and_it_leaves_the_export(index, store):
    first, second = keys_in_order(index, "closeness")[:2]
    store.record(first, Action.ACCEPT, "ann", "near")
    store.record(second, Action.REJECT, "ann", "near", reason="smear_or_artefact")
    store.record(first, Action.ACCEPT, "bob", "near")
    undone = store.undo("ann")
    assert (undone.sample_key, undone.action) == (second, Action.REJECT)
    assert [d.key for d in store.decisions()] == [first]
    assert len(store.rows(include_undone=True)) == 3 and len(store.rows()) == 2
    assert store.undo("carl") is None


def test_export_is_the_decisions_file_build_reads(index, store, tmp_path):
    a, b, c = keys_in_order(index, "closeness")[:3]
    store.record(a, Action.ACCEPT, "ann", "near")
    store.record(b, Action.PICK, "ann", "near", candidate=2)
    store.record(b, Action.PICK, "bob", "near", candidate=3)  # the latest wins
    store.record(c, Action.REJECT, "ann", "near", reason="shadow_or_reflection")
    store.record(c, Action.SKIP, "bob", "near")
    parsed = parse_decisions(decisions_jsonl(export_all(store.path)))
    assert {key: (d.verdict.value, d.reviewer, d.note) for key, d in parsed.by_key.items()} == {
        a: ("accept", "ann", ""), candidate_key(b, 3): ("accept", "bob", ""),
        c: ("reject", "ann", "shadow_or_reflection")}
    assert export_all(store.path, "another@version") == []


def test_dashboard_audit_precision_reasons_and_agreement(index, store):
    audit = keys_in_order(index, "audit", "passed = 1")[:4]
    for key, action in zip(audit, [Action.ACCEPT, Action.PICK, Action.ACCEPT, Action.REJECT]):
        extra = {"candidate": 0} if action is Action.PICK else {"reason": "wrong_label"} if action is Action.REJECT else {}
        store.record(key, action, "ann", "audit", **extra)
    for key, action in zip(audit, [Action.ACCEPT, Action.REJECT, Action.ACCEPT, Action.REJECT]):
        store.record(key, action, "bob", "audit", reason="other" if action is Action.REJECT else None)
    board = store.dashboard()
    # bob decided last on every audited sample: 2 kept of 4.
    assert (board.audit.successes, board.audit.n) == (2, 4)
    assert board.reasons == {"wrong_label": 1, "other": 2}
    assert board.reviewers["ann"] == {"accept": 2, "pick": 1, "reject": 1}
    (pair,) = board.agreements
    # keep/keep, keep/reject, keep/keep, reject/reject: p_o 0.75, p_e 0.75*0.5 + 0.25*0.5 = 0.5 -> kappa 0.5.
    assert (pair.first, pair.second, pair.n, pair.kappa) == ("ann", "bob", 4, pytest.approx(0.5))


def test_threads_deciding_at_once_all_get_their_rows(index, store):
    key = keys_in_order(index, "closeness")[0]
    barrier = threading.Barrier(8)
    errors = []

    def decide(reviewer: str) -> None:
        try:
            barrier.wait()
            for _ in range(25):
                store.record(key, Action.ACCEPT, reviewer, "near")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=decide, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.rows(key)) == 200 and {row.reviewer for row in store.rows(key)} == {f"r{i}" for i in range(8)}


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "best"}, "unknown queue"), ({"name": "label"}, "label is missing"),
    ({"name": "near", "label": "cat"}, "label is not used"), ({"name": "score", "score": "seam"}, "low, high"),
    ({"name": "score", "score": "beauty", "low": 1.0}, "unknown score"), ({"low": 0.1}, "belong to a score queue"),
])
def test_a_wrong_queue_fails_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Queue(**kwargs)


def test_a_reject_needs_a_known_reason(index, store):
    with pytest.raises(ValueError, match="unknown reject reason"):
        store.record(keys_in_order(index, "closeness")[0], Action.REJECT, "ann", "near", reason="ugly")
