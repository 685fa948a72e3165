"""Content deduplication: one copy kept per sha256, and with a spool folder the shuffle holds no image bytes."""
import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from schemas import SourceImage
from transforms.dedup import DeduplicateByContent, _SpooledImage, _SpoolImagesFn
from transforms.ledger import MAIN_LEDGER, RunAccounts


def _image(name: str, content: bytes) -> SourceImage:
    sha = content.hex().ljust(64, "0")[:64]
    return SourceImage(key=f"k{sha[:8]}", sha256=sha, uri=f"mem://{name}", width=2, height=2, jpeg=content * 1000)


IMAGES = [_image("b.jpg", b"\x01"), _image("a.jpg", b"\x01"), _image("c.jpg", b"\x02"), _image("d.jpg", b"\x03")]


@pytest.mark.parametrize("spooled", [False, True], ids=["in_shuffle", "spooled"])
def test_the_smallest_uri_of_each_content_is_kept_whole_and_the_spools_are_gone(tmp_path, spooled):
    with beam.Pipeline("FnApiRunner", options=PipelineOptions()) as p:
        unique = (p | beam.Create(IMAGES)
                  | DeduplicateByContent(str(tmp_path) if spooled else None))
        assert_that(unique, equal_to([IMAGES[1], IMAGES[2], IMAGES[3]]))
        rejected = RunAccounts.of(p).rejections(MAIN_LEDGER)[0]
        assert_that(rejected | beam.Map(lambda r: (r.uri, r.reason.value, r.detail)),
                    equal_to([("mem://b.jpg", "duplicate_content", "same bytes as mem://a.jpg")]), label="Rejected")
    assert list(tmp_path.iterdir()) == []


def test_a_spooled_reference_carries_no_image_bytes_and_loads_them_back(tmp_path):
    spool = _SpoolImagesFn(str(tmp_path))
    spool.start_bundle()
    refs = [ref for image in IMAGES for _, ref in spool.process(image)]
    spool.finish_bundle()
    assert all(isinstance(ref, _SpooledImage) and "jpeg" not in ref.fields for ref in refs)
    assert [ref.load() for ref in refs] == IMAGES
    assert len({ref.spool for ref in refs}) == 1 and len(list(tmp_path.iterdir())) == 1


def test_a_failed_bundle_deletes_its_spool_at_once(tmp_path):
    spool = _SpoolImagesFn(str(tmp_path))
    spool.start_bundle()
    list(spool.process(IMAGES[0]))
    assert len(list(tmp_path.iterdir())) == 1
    spool._spool._file.close()  # the next write fails, as on a lost volume
    with pytest.raises(ValueError):
        list(spool.process(IMAGES[1]))
    assert list(tmp_path.iterdir()) == []
