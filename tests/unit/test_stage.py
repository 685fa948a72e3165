"""Stage plumbing: kept, rejected and dead-lettered records stay apart, and every stage's flow is balanced by key."""
import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from schemas import DeadLetter, Reason, Rejection
from transforms.ledger import FlowBalanceFn, Ledger, LedgerError, RunAccounts, StageTable, check_stages, stage_rows
from transforms.stage import Stage


def _poisonable(value):
    if value == 13:
        raise ValueError("poisoned record")
    if value % 5 == 0:
        yield Rejection(f"mem://{value}", "toy", Reason.CORRUPT_IMAGE, "multiple of five", str(value))
        return
    yield _Keyed(value * 10, str(value))


class _Keyed:
    """A record with a key (what the stage table names records by)."""

    def __init__(self, value: int, key: str) -> None:
        self.value = value
        self.key = key


class _Toy(Stage):
    stage = "toy"

    def record_fn(self):
        return _poisonable


def _keyed_inputs(p, values):
    return p | beam.Create(values) | "Keyed" >> beam.Map(lambda v: _Keyed(v, str(v)))


def test_one_poisoned_record_in_a_batch_is_the_only_dead_letter():
    values = list(range(1, 31))
    with beam.Pipeline(runner="FnApiRunner") as p:
        batch = (p | beam.Create(values) | beam.BatchElements(min_batch_size=30, max_batch_size=30)
                 | beam.FlatMap(list))
        kept = batch | "Toy" >> _Toy()
        accounts = RunAccounts.of(p)
        [rejected], [dead] = accounts.rejections(""), accounts.dead_letters("")
        assert_that(kept | beam.Map(lambda record: record.value), equal_to([v * 10 for v in values if v != 13 and v % 5]),
                    label="kept")
        assert_that(
            rejected | beam.Map(lambda r: (r.uri, r.reason)),
            equal_to([(f"mem://{v}", Reason.CORRUPT_IMAGE) for v in values if v % 5 == 0]),
            label="rejected",
        )
        assert_that(
            dead | beam.Map(lambda d: (d.stage, d.error_type, "poisoned record" in d.error, "ValueError" in d.traceback)),
            equal_to([("toy", "ValueError", True, True)]),
            label="dead",
        )


def test_stage_needs_a_name():
    class Nameless(Stage):
        def record_fn(self):
            return _poisonable

    with pytest.raises(TypeError, match="stage name"):
        with beam.Pipeline(runner="FnApiRunner") as p:
            _ = p | beam.Create([1]) | Nameless()


def _loses_seven(record):
    if record.key != "7":
        yield record


def _doubles_eight(record):
    yield record
    if record.key == "8":
        yield record


class _Lossy(Stage):
    stage = "lossy"

    def record_fn(self):
        return _loses_seven


class _Doubling(Stage):
    stage = "doubling"

    def record_fn(self):
        return _doubles_eight


def test_stage_table_names_the_record_a_stage_drops_and_the_one_it_emits_twice(tmp_path):
    rows_file = tmp_path / "rows.txt"
    with beam.Pipeline(runner="FnApiRunner") as p:
        _ = _keyed_inputs(p, range(20)) | "Lossy" >> _Lossy() | "Doubling" >> _Doubling() | "Toy" >> _Toy()
        accounts = RunAccounts.of(p)
        stages = list(accounts.stages)
        table = accounts.flows | beam.Flatten() | StageTable()
        _ = table | beam.Map(lambda t: rows_file.write_text(repr(stage_rows(stages, t))))
    rows = {row["stage"]: row for row in eval(rows_file.read_text())}  # noqa: S307 - our own repr
    assert (rows["lossy"]["in"], rows["lossy"]["out"], rows["lossy"]["missing_keys"]) == (20, 19, ["7"])
    assert not rows["lossy"]["closed"]
    assert (rows["doubling"]["out"], rows["doubling"]["extra"], rows["doubling"]["extra_keys"]) == (20, 1, ["8"])
    # The toy stage got 20 records (8 twice): each ended once, as kept, rejected or dead; it closes.
    assert rows["toy"]["closed"] and rows["toy"]["in"] == 20
    assert rows["toy"]["out"] + rows["toy"]["rejected"] + rows["toy"]["dead_letters"] == 20
    with pytest.raises(LedgerError, match=r"stage lossy does not close: .* 1 records missing \(e.g. 7\)"):
        check_stages(list(rows.values()))


def test_flow_balance_cancels_across_bundles_and_keeps_only_unbalanced_keys():
    balance = FlowBalanceFn()
    producer = balance.create_accumulator()
    for key in "abc":
        producer = balance.add_input(producer, ("in", key, 1))
    consumer = balance.create_accumulator()
    for key in "ab":
        consumer = balance.add_input(consumer, ("out", key, -1))
    counts, row = balance.extract_output(balance.merge_accumulators([producer, consumer]))
    assert counts == {"in": 3, "out": 2}
    assert row == {"missing": 1, "extra": 0, "missing_keys": ["c"], "extra_keys": []}


def test_ledger_closes_only_when_every_input_is_accounted_for():
    tally = {("inputs", "file"): 10, ("written", ""): 6, ("rejected", "empty_file"): 3, ("dead_letter", "decode"): 1}
    ledger = Ledger.from_tally(tally)
    assert ledger.closed and ledger.to_json()["rejected_total"] == 3
    ledger.check()
    lossy = Ledger.from_tally({**tally, ("written", ""): 5})
    assert not lossy.closed
    with pytest.raises(LedgerError, match="10 inputs but 5 written"):
        lossy.check()
    assert Ledger.from_json(ledger.to_json()) == ledger
    objects = Ledger.from_tally({("objects.inputs", ""): 2, ("objects.written", ""): 2, ("inputs", ""): 9}, unit="objects")
    assert objects.inputs == 2 and objects.closed
    assert isinstance(DeadLetter("u", "s", "E", "e", "tb").to_row(), dict)
