"""The review decisions file: parsing, the latest decision per key, and errors that name the line."""
from __future__ import annotations

import json

import pytest

from schemas.decisions import Decision, DecisionsError, Verdict, decisions_jsonl, parse_decisions


def line(key, decision, time, reviewer="ana", **extra):
    return json.dumps({"key": key, "decision": decision, "reviewer": reviewer, "time": time, **extra})


def test_the_latest_decision_per_key_wins_and_a_later_line_wins_a_tie():
    data = "\n".join([
        line("k_o001", "reject", "2026-11-21T10:00:00+00:00"),
        line("k_o001", "accept", "2026-11-21T09:00:00+00:00"),  # older: ignored
        line("k_o002", "accept", "2026-11-21T10:00:00+00:00"),
        "",
        line("k_o002", "reject", "2026-11-21T11:00:00+01:00", reviewer="bo"),  # same instant: later line wins
    ]).encode()
    decisions = parse_decisions(data)
    assert decisions.get("k_o001").verdict is Verdict.REJECT
    assert (decisions.get("k_o002").verdict, decisions.get("k_o002").reviewer) == (Verdict.REJECT, "bo")
    assert (len(decisions), decisions.lines) == (2, 4)
    assert decisions.get("k_o003") is None
    assert len(decisions.sha256) == 64


def test_a_round_trip_through_the_file_format_keeps_every_field():
    made = [Decision("k_o001_c02", Verdict.ACCEPT, "ana", "2026-11-21T10:00:00+00:00", "sharp")]
    assert parse_decisions(decisions_jsonl(made)).get("k_o001_c02") == made[0]


@pytest.mark.parametrize("bad, message", [
    ('{"key": "k", "decision": "maybe", "reviewer": "a", "time": "2026-11-21T10:00:00+00:00"}', "accept' or 'reject"),
    ('{"key": "k", "decision": "accept", "reviewer": "a", "time": "2026-11-21T10:00:00"}', "UTC offset"),
    ('{"key": "k", "decision": "accept", "time": "2026-11-21T10:00:00+00:00"}', "reviewer"),
    ('{"key": "k.jpg", "decision": "accept", "reviewer": "a", "time": "2026-11-21T10:00:00+00:00"}', "invalid"),
    ('{"key": "k", "decision": "accept", "reviewer": "a", "time": "2026-11-21T10:00:00+00:00", "score": 1}', "unknown"),
    ("[1, 2]", "JSON object"),
    ("{not json", "JSONDecodeError"),
])
def test_a_bad_line_is_reported_with_its_number(bad, message):
    data = (line("k_o001", "accept", "2026-11-21T10:00:00+00:00") + "\n" + bad + "\n").encode()
    with pytest.raises(DecisionsError, match=rf"decisions.jsonl:2: .*{message}"):
        parse_decisions(data, "decisions.jsonl")
