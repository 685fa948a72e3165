"""Stage plumbing: kept, rejected and dead-lettered records stay apart, one record at a time."""
import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline.ledger import Ledger, LedgerError
from pipeline.stage import StageDoFn, apply_stage
from schemas import DeadLetter, Reason, Rejection


class _Poisonable(StageDoFn):
    stage = "toy"

    def process_record(self, value):
        if value == 13:
            raise ValueError("poisoned record")
        if value % 5 == 0:
            yield Rejection(f"mem://{value}", self.stage, Reason.CORRUPT_IMAGE, "multiple of five")
            return
        yield value * 10


def test_one_poisoned_record_in_a_batch_is_the_only_dead_letter():
    values = list(range(1, 31))
    with beam.Pipeline(runner="FnApiRunner") as p:
        batch = p | beam.Create(values) | beam.BatchElements(min_batch_size=30, max_batch_size=30) | beam.FlatMap(list)
        outputs = apply_stage(batch, "Toy", _Poisonable())
        assert_that(outputs.main, equal_to([v * 10 for v in values if v != 13 and v % 5]), label="kept")
        assert_that(
            outputs.rejected | beam.Map(lambda r: (r.uri, r.reason)),
            equal_to([(f"mem://{v}", Reason.CORRUPT_IMAGE) for v in values if v % 5 == 0]),
            label="rejected",
        )
        assert_that(
            outputs.dead_letters | beam.Map(lambda d: (d.stage, d.error_type, "poisoned record" in d.error, "ValueError" in d.traceback)),
            equal_to([("toy", "ValueError", True, True)]),
            label="dead",
        )


def test_stage_needs_a_name():
    class Nameless(StageDoFn):
        pass

    with pytest.raises(TypeError, match="stage name"):
        Nameless()


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
    assert isinstance(DeadLetter("u", "s", "E", "e", "tb").to_row(), dict)
