"""``counterfactory sheet`` on built pairs: source | region | removed | pasted, one object per row."""
import io
import json
import logging
import pathlib

import numpy as np
import pytest
from PIL import Image

from jobs import cli
from pipeline.testing import write_candidate_set
from review.contact_sheet import BACKGROUND, CAPTION_PX, _crop_box, pairs_sheet
from schemas.sample import Field

OBJECTS = 6
SIDE = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("sheet")
    candidates = write_candidate_set(base / "candidates", OBJECTS, seed=3)
    assert cli.main(["build", f"--candidates={candidates}", f"--output={base / 'datasets'}", "--name=demo",
                     "--version=v1"]) == 0
    return base / "datasets" / "demo" / "v1"


def _first_pair(built: pathlib.Path) -> dict:
    import webdataset
    return next(iter(webdataset.WebDataset(sorted(map(str, built.glob("shard-*.tar"))), shardshuffle=False)))


def _tile(data: bytes, box) -> np.ndarray:
    """A member as the sheet tiles it: cropped around the object, fitted into SIDE x SIDE, centred."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image = image.crop(_crop_box(box, image.width, image.height, margin=1.0, min_side=96))
        image.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
        tile = np.full((SIDE, SIDE, 3), BACKGROUND, np.float32)
        top, left = (SIDE - image.height) // 2, (SIDE - image.width) // 2
        tile[top:top + image.height, left:left + image.width] = np.asarray(image, np.float32)
        return tile


def test_the_sheet_command_draws_built_pairs(built, tmp_path):
    """Before: 'no contact sheet for samples of kind 'pairs'', exit 2."""
    picture = tmp_path / "pairs.png"
    assert cli.main(["sheet", "--shards", str(built), "--output", str(picture), "--side", str(SIDE)]) == 0
    pairs = json.loads((built / "stats.json").read_text())["shards"]["samples"]
    assert pairs > 0
    with Image.open(picture) as sheet:
        assert sheet.size == (4 * SIDE, min(pairs, 12) * (SIDE + CAPTION_PX))
        assert np.asarray(sheet.convert("RGB"), np.float32).std() > 10, "the tiles are drawn"


def test_each_row_is_source_region_removed_pasted(built):
    sample = _first_pair(built)
    row = np.asarray(pairs_sheet(sorted(map(str, built.glob("shard-*.tar"))), [sample["__key__"]], side=SIDE),
                     np.float32)
    tiles = [row[:SIDE, column * SIDE:(column + 1) * SIDE] for column in range(4)]
    box = json.loads(sample[Field.JSON])["detection"]["box"]
    assert np.abs(tiles[0] - _tile(sample[Field.SRC], box)).mean() < 1
    assert np.abs(tiles[2] - _tile(sample[Field.REMOVED], box)).mean() < 1
    assert np.abs(tiles[3] - _tile(sample[Field.PASTED], box)).mean() < 1
    region = _tile(sample[Field.REGION], box)[..., 0] > 127
    tint = tiles[1][..., 0] - tiles[0][..., 0]
    assert region.any() and tint[region].mean() > 20 and np.abs(tint[~region]).mean() < 5, "the region, tinted"


def test_a_sample_that_differs_from_its_recorded_digest_is_left_out_of_the_sheet_and_counted(tmp_path, caplog):
    """Before: the sheet checked the shards' md5s only and drew a sample damaged behind its manifest."""
    from tests.integration.test_review_server import damage_behind_the_manifest
    candidates = write_candidate_set(tmp_path / "candidates", 4, seed=3)
    damaged = damage_behind_the_manifest(candidates)
    picture = tmp_path / "sheet.png"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["sheet", "--candidates", str(candidates), "--output", str(picture), "--side", str(SIDE)]) == 0
    with Image.open(picture) as sheet:
        assert sheet.height == 3 * (SIDE + CAPTION_PX), "three rows: the damaged object is not drawn"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"sample {damaged!r} left out: its bytes are not those written (sample_digest_mismatch" in w
               for w in warnings), warnings
    assert "left 1 damaged samples out of the sheet (sample_digest_mismatch)" in warnings
