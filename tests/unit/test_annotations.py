"""Annotation-file parsing: every image yielded, every box kept or rejected, pixels right."""
from __future__ import annotations

import io
import json
import math
import pathlib

import numpy as np
import pytest
from PIL import Image

from schemas import Annotation, Box, Reason, Rejection
from schemas.records import AnnotationMask
from transforms.io.annotations import (
    PARSERS,
    AnnotatedImage,
    detect_format,
    join_path,
    load_class_descriptions,
    mask_pixels,
    parse_coco,
    parse_openimages,
)

OI_HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n"
)


def _coco(annotations: list[dict], images: list[dict] | None = None) -> bytes:
    return json.dumps(
        {
            "images": images
            if images is not None
            else [
                {"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
                {"id": 2, "file_name": "sub/b.jpg", "width": 50, "height": 50},
                {"id": 3, "file_name": "empty.jpg", "width": 10, "height": 10},
            ],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}],
        }
    ).encode()


def _ann(id_: int, image_id: int, bbox: list, category_id: int = 1, iscrowd: int = 0) -> dict:
    return {"id": id_, "image_id": image_id, "bbox": bbox, "category_id": category_id, "iscrowd": iscrowd}


def _split(parsed) -> tuple[dict[str, AnnotatedImage], list[Rejection]]:
    images, orphans = {}, []
    for record in parsed:
        if isinstance(record, AnnotatedImage):
            assert record.path not in images
            images[record.path] = record
        else:
            orphans.append(record)
    return images, orphans


def _counted(images: dict[str, AnnotatedImage], orphans: list[Rejection]) -> int:
    return sum(len(i.annotations) + len(i.rejections) for i in images.values()) + len(orphans)


def _oi_row(image_id: str, mid: str, xmin, xmax, ymin, ymax, group: int = 0) -> str:
    return f"{image_id},xclick,{mid},1,{xmin},{xmax},{ymin},{ymax},0,0,{group},0,0\n"


# --- COCO ---------------------------------------------------------------------------------


def test_coco_multiple_boxes_labels_and_every_image_yielded():
    anns = [_ann(10, 1, [10, 20, 30, 40]), _ann(11, 1, [0, 0, 200, 100], 17, iscrowd=1), _ann(12, 2, [1.5, 2, 3, 4])]
    images, orphans = _split(parse_coco(_coco(anns), "/data"))

    assert list(images) == ["/data/a.jpg", "/data/sub/b.jpg", "/data/empty.jpg"]
    assert orphans == []
    a = images["/data/a.jpg"]
    assert (a.width, a.height, a.normalized) == (200, 100, False)
    assert a.annotations == (
        Annotation("person", Box(10, 20, 40, 60), category_id=1, source="coco", is_crowd=False),
        Annotation("cat", Box(0, 0, 200, 100), category_id=17, source="coco", is_crowd=True),
    )
    assert images["/data/sub/b.jpg"].annotations[0].box == Box(1.5, 2, 4.5, 6)
    empty = images["/data/empty.jpg"]
    assert empty.annotations == () and empty.rejections == ()


@pytest.mark.parametrize(
    "bbox, why",
    [
        ([10, 10, 0, 5], "empty or inverted"),
        ([10, 10, 5, -3], "empty or inverted"),
        ([10, 10, math.nan, 5], "non-finite"),
        ([10, 10, math.inf, 5], "non-finite"),
        ([250, 10, 20, 20], "entirely outside"),
        ([200, 10, 20, 20], "entirely outside"),  # starts on the right edge: nothing inside
        ([-30, 10, 20, 20], "entirely outside"),
        ([150, 10, 80, 20], "overhangs"),  # 30 px past a 200 px side: coordinates do not fit
        ([10, 10, 5], "not four numbers"),
        (None, "not four numbers"),
        ([10, "10", 5, 5], "not four numbers"),
    ],
)
def test_coco_invalid_boxes_are_rejected_with_reason(bbox, why):
    images, _ = _split(parse_coco(_coco([_ann(7, 1, bbox), _ann(8, 1, [1, 1, 2, 2])]), "/data"))

    a = images["/data/a.jpg"]
    assert len(a.annotations) == 1
    (rejection,) = a.rejections
    assert rejection.reason is Reason.INVALID_BOX
    assert rejection.stage == "annotations"
    assert rejection.uri == "/data/a.jpg"
    assert rejection.detail.startswith("annotation 7: ") and why in rejection.detail


def test_coco_small_overhang_is_clipped_to_declared_size():
    anns = [_ann(1, 1, [-1.5, 95, 202 + 1.5, 6.5]), _ann(2, 2, [49.5, 0, 0.9, 50])]
    images, _ = _split(parse_coco(_coco(anns), ""))

    assert images["a.jpg"].annotations[0].box == Box(0, 95, 200, 100)
    assert images["sub/b.jpg"].annotations[0].box == Box(49.5, 0, 50, 50)
    assert images["a.jpg"].rejections == ()


def test_coco_without_declared_size_keeps_boxes_unclipped():
    images_json = [{"id": 1, "file_name": "a.jpg"}]
    images, _ = _split(parse_coco(_coco([_ann(1, 1, [500, 500, 10, 10])], images_json), "r"))

    assert images["r/a.jpg"].annotations[0].box == Box(500, 500, 510, 510)
    assert (images["r/a.jpg"].width, images["r/a.jpg"].height) == (None, None)


def test_coco_unknown_image_and_category_are_rejected_and_everything_is_counted():
    anns = [
        _ann(1, 1, [1, 1, 5, 5]),
        _ann(2, 99, [1, 1, 5, 5]),  # no such image
        _ann(3, 2, [1, 1, 5, 5], category_id=5),  # no such category
        _ann(4, 2, [1, 1, 0, 5]),
        _ann(5, 2, [1, 1, 5, 5]),
    ]
    images, orphans = _split(parse_coco(_coco(anns), "/data"))

    assert len(images) == 3
    assert _counted(images, orphans) == len(anns)
    (orphan,) = orphans
    assert orphan.reason is Reason.INVALID_BOX and orphan.uri == ""
    assert "annotation 2" in orphan.detail and "image_id 99" in orphan.detail
    b = images["/data/sub/b.jpg"]
    assert len(b.annotations) == 1
    assert [r.detail.split(":")[0] for r in b.rejections] == ["annotation 3", "annotation 4"]
    assert "unknown category_id 5" in b.rejections[0].detail


def test_coco_duplicate_image_id_is_an_error():
    images_json = [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]
    with pytest.raises(ValueError, match="twice"):
        parse_coco(_coco([], images_json), "")


@pytest.mark.parametrize("wrap", [bytes, lambda b: b.decode(), io.BytesIO, lambda b: io.StringIO(b.decode())])
def test_coco_accepts_bytes_text_and_streams(wrap):
    images, _ = _split(parse_coco(wrap(_coco([_ann(1, 1, [1, 1, 5, 5])])), "gs://bucket/coco"))

    assert images["gs://bucket/coco/a.jpg"].annotations[0].box == Box(1, 1, 6, 6)


def test_coco_boxes_are_already_pixels():
    images, _ = _split(parse_coco(_coco([_ann(1, 1, [1, 1, 5, 5])]), ""))

    a = images["a.jpg"]
    assert a.in_pixels(200, 100) == a.annotations


# --- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "root, path, joined",
    [
        ("gs://bucket/images", "train/x.jpg", "gs://bucket/images/train/x.jpg"),
        ("gs://bucket/images/", "x.jpg", "gs://bucket/images/x.jpg"),
        ("s3://b", "x.jpg", "s3://b/x.jpg"),
        ("/data/coco", "x.jpg", "/data/coco/x.jpg"),
        ("relative/dir", "x.jpg", "relative/dir/x.jpg"),
        ("", "x.jpg", "x.jpg"),
        ("gs://bucket/images", "/abs/x.jpg", "/abs/x.jpg"),
        ("/data", "https://example.com/x.jpg", "https://example.com/x.jpg"),
    ],
)
def test_join_path(root, path, joined):
    assert join_path(root, path) == joined


# --- OpenImages ---------------------------------------------------------------------------


def test_openimages_unsorted_rows_are_grouped_by_image_in_first_appearance_order():
    csv_text = OI_HEADER + "".join(
        [
            _oi_row("img2", "/m/01yrx", 0.1, 0.5, 0.2, 0.6),
            _oi_row("img1", "/m/01g317", 0.0, 1.0, 0.0, 1.0, group=1),
            _oi_row("img2", "/m/01g317", 0.5, 0.75, 0.25, 0.5),
            _oi_row("img3", "/m/01yrx", 0.2, 0.2, 0.1, 0.3),  # zero width: img3 still yielded
            _oi_row("img1", "/m/01yrx", 0.25, 0.5, 0.5, 0.75),
        ]
    )
    images, orphans = _split(parse_openimages(csv_text, "gs://bucket/oi", {"/m/01yrx": "Cat", "/m/01g317": "Person"}))

    assert list(images) == ["gs://bucket/oi/img2.jpg", "gs://bucket/oi/img1.jpg", "gs://bucket/oi/img3.jpg"]
    assert orphans == []
    img2 = images["gs://bucket/oi/img2.jpg"]
    assert [a.label for a in img2.annotations] == ["Cat", "Person"]
    assert img2.annotations[0] == Annotation("Cat", Box(0.1, 0.2, 0.5, 0.6), source="openimages", is_crowd=False)
    img1 = images["gs://bucket/oi/img1.jpg"]
    assert [(a.label, a.is_crowd) for a in img1.annotations] == [("Person", True), ("Cat", False)]
    img3 = images["gs://bucket/oi/img3.jpg"]
    assert img3.annotations == () and len(img3.rejections) == 1
    assert all(i.normalized and i.width is None for i in images.values())


def test_openimages_normalised_boxes_convert_to_pixels():
    csv_text = OI_HEADER + _oi_row("x", "/m/01yrx", 0.25, 0.75, 0.1, 0.5) + _oi_row("x", "/m/01yrx", 0, 1, 0, 1)
    (image,) = parse_openimages(csv_text, "/oi")

    pixels = image.in_pixels(640, 480)
    assert pixels[0].box == Box(160, 48, 480, 240)
    assert pixels[1].box == Box(0, 0, 640, 480)
    assert pixels[0].label == "/m/01yrx"  # no class descriptions: the MID is the label
    assert image.annotations[0].box == Box(0.25, 0.1, 0.75, 0.5)  # stored normalised
    with pytest.raises(ValueError):
        image.in_pixels(0, 480)


def test_openimages_invalid_rows_are_rejected_and_everything_is_counted():
    rows = [
        _oi_row("a", "/m/01yrx", 0.1, 0.5, 0.2, 0.6),  # kept
        _oi_row("a", "/m/01yrx", 0.5, 0.1, 0.2, 0.6),  # inverted (XMax < XMin)
        _oi_row("a", "/m/01yrx", 0.3, 0.3, 0.2, 0.6),  # zero width
        _oi_row("a", "/m/01yrx", 0.1, 0.5, "nan", 0.6),  # NaN
        _oi_row("b", "/m/01yrx", 1.1, 1.5, 0.2, 0.6),  # entirely outside
        _oi_row("b", "/m/01yrx", 0.5, 1.01, 0.2, 0.6),  # overhangs a little: clipped
        _oi_row("b", "/m/01yrx", 0.1, 0.5, "", 0.6),  # not a number
        _oi_row("b", "/m/0dog", 0.1, 0.5, 0.2, 0.6),  # MID not in the descriptions
        _oi_row("", "/m/01yrx", 0.1, 0.5, 0.2, 0.6),  # names no image
    ]
    images, orphans = _split(parse_openimages((OI_HEADER + "".join(rows)).encode(), "/oi", {"/m/01yrx": "Cat"}))

    assert _counted(images, orphans) == len(rows)
    a, b = images["/oi/a.jpg"], images["/oi/b.jpg"]
    assert len(a.annotations) == 1 and len(a.rejections) == 3
    assert [r.detail.split(":")[0] for r in a.rejections] == ["line 3", "line 4", "line 5"]
    assert b.annotations[0].box == Box(0.5, 0.2, 1.0, 0.6)
    assert ["entirely outside" in b.rejections[0].detail, "not four numbers" in b.rejections[1].detail] == [True, True]
    assert "/m/0dog" in b.rejections[2].detail
    assert all(r.reason is Reason.INVALID_BOX and r.uri == "/oi/b.jpg" for r in b.rejections)
    (orphan,) = orphans
    assert orphan.uri == "" and orphan.detail.startswith("line 10")


def test_openimages_reads_a_binary_stream_with_bom_and_crlf():
    data = ("\ufeff" + OI_HEADER + _oi_row("a", "/m/01yrx", 0.1, 0.5, 0.2, 0.6)).replace("\n", "\r\n").encode()
    (image,) = parse_openimages(io.BytesIO(data), "/oi")

    assert image.path == "/oi/a.jpg"
    assert image.annotations[0].box == Box(0.1, 0.2, 0.5, 0.6)


def test_openimages_missing_columns_is_an_error():
    with pytest.raises(ValueError, match="XMax"):
        parse_openimages("ImageID,LabelName,XMin,YMin,YMax\n", "/oi")


def test_load_class_descriptions():
    text = '/m/01g317,Person\n/m/01yrx,Cat\n/m/0k4j,"Car, parked"\n\n'
    expected = {"/m/01g317": "Person", "/m/01yrx": "Cat", "/m/0k4j": "Car, parked"}
    assert load_class_descriptions(text.encode()) == expected
    assert load_class_descriptions(io.StringIO("LabelName,DisplayName\n/m/01yrx,Cat\n")) == {"/m/01yrx": "Cat"}
    with pytest.raises(ValueError, match="line 2"):
        load_class_descriptions("/m/01yrx,Cat\n/m/x\n")


# --- registry -----------------------------------------------------------------------------


def test_detect_format_and_registry():
    assert detect_format("gs://b/instances_val2017.JSON") == "coco"
    assert detect_format("/data/oidv6-train-annotations-bbox.csv") == "openimages"
    assert PARSERS[detect_format("x.json")] is parse_coco
    assert PARSERS[detect_format("x.csv")] is parse_openimages
    with pytest.raises(ValueError, match="coco, openimages"):
        detect_format("boxes.txt")


# --- bundled sample files -----------------------------------------------------------------

SAMPLES = pathlib.Path(__file__).resolve().parents[2] / "jobs" / "samples" / "annotations"
SAMPLE_MIDS = {
    "astronaut.jpg": "/m/01g317",
    "coffee.jpg": "/m/02p5f1q",
    "chelsea.jpg": "/m/01yrx",
    "rocket.jpg": "/m/09rvcxw",
    "motorcycle.jpg": "/m/04_sv",
}


def test_sample_coco_file():
    images, orphans = _split(parse_coco((SAMPLES / "coco.json").read_bytes(), "jobs/samples/images"))

    assert sorted(images) == sorted(f"jobs/samples/images/{name}" for name in SAMPLE_MIDS)
    assert orphans == []
    labels = {path.rsplit("/", 1)[1]: [a.label for a in i.annotations] for path, i in images.items()}
    assert labels == {
        "astronaut.jpg": ["person"],
        "coffee.jpg": ["cup"],
        "chelsea.jpg": ["cat"],
        "rocket.jpg": [],
        "motorcycle.jpg": ["motorcycle"],
    }
    rejected = [r for i in images.values() for r in i.rejections]
    assert [(r.uri, r.reason) for r in rejected] == [("jobs/samples/images/chelsea.jpg", Reason.INVALID_BOX)]


def test_sample_openimages_file_agrees_with_coco():
    descriptions = load_class_descriptions((SAMPLES / "class-descriptions.csv").read_bytes())
    oi, orphans = _split(parse_openimages((SAMPLES / "openimages.csv").read_bytes(), "", descriptions))
    coco, _ = _split(parse_coco((SAMPLES / "coco.json").read_bytes(), ""))

    assert sorted(oi) == sorted(SAMPLE_MIDS) and orphans == []
    assert [name for name, i in oi.items() if i.rejections] == ["coffee.jpg"]
    assert len(oi["coffee.jpg"].rejections) == 1
    for name, image in oi.items():
        (annotation,) = image.in_pixels(coco[name].width, coco[name].height)
        assert annotation.label == descriptions[SAMPLE_MIDS[name]]
        if name != "rocket.jpg":  # COCO has no rocket class
            (theirs,) = coco[name].annotations
            assert annotation.box.as_list() == pytest.approx(theirs.box.as_list(), abs=0.5)


# --- masks: parsing ------------------------------------------------------------------------


def _masked(segmentation, size=(200, 100)) -> tuple[Annotation | None, tuple[Rejection, ...]]:
    ann = {**_ann(1, 1, [10, 10, 50, 50]), "segmentation": segmentation}
    images = [{"id": 1, "file_name": "a.jpg", "width": size[0], "height": size[1]}]
    (image,) = _split(parse_coco(_coco([ann], images), ""))[0].values()
    return (image.annotations[0] if image.annotations else None), image.rejections


def test_coco_polygons_and_rle_become_annotation_masks():
    polygon, _ = _masked([[10, 10, 60, 10, 60, 60], [0, 0, 1, 1]])  # a sliver of 2 points adds nothing
    assert polygon.mask == AnnotationMask("polygon", ((10.0, 10.0, 60.0, 10.0, 60.0, 60.0),))
    runs, _ = _masked({"size": [100, 200], "counts": [19000, 1000]})
    assert runs.mask == AnnotationMask("rle", (19000, 1000), 200, 100)
    compressed, _ = _masked({"size": [100, 200], "counts": "PQ40"})
    assert compressed.mask == AnnotationMask("rle", "PQ40", 200, 100)
    boxed, _ = _masked([])
    assert boxed.mask is None and boxed.box == Box(10, 10, 60, 60)


@pytest.mark.parametrize(
    "segmentation, why",
    [
        ([[10, 10, 60, 10, 60]], "not an even list"),
        ([[10, 10, "60", 10, 60, 60]], "not an even list"),
        ([[10, 10, 20, 20]], "no segmentation polygon has 3 points"),
        ({"size": [100, 200], "counts": [5, 5]}, "cover 10 pixels"),
        ({"size": [50, 200], "counts": [10000]}, "the image is declared 200x100"),
        ({"size": [100], "counts": [20000]}, "not [height, width]"),
        ({"size": [100, 200], "counts": ""}, "neither a string nor a list"),
        ({"counts": "PQ40"}, "neither polygons nor RLE"),
        ("polygon", "neither polygons nor RLE"),
    ],
)
def test_coco_malformed_segmentation_rejects_its_annotation(segmentation, why):
    annotation, (rejection,) = _masked(segmentation)
    assert annotation is None
    assert rejection.reason is Reason.INVALID_MASK and why in rejection.detail


def test_annotation_mask_survives_json_round_trip():
    for mask in (AnnotationMask("polygon", ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0),)), AnnotationMask("rle", (3, 4), 7, 1),
                 AnnotationMask("rle", "PQ40", 200, 100), AnnotationMask("png", "/m/x.png")):
        annotation = Annotation("cup", Box(0, 0, 1, 1), mask=mask)
        assert Annotation.from_json(json.loads(json.dumps(annotation.to_json()))) == annotation
    with pytest.raises(ValueError, match="mask kind"):
        AnnotationMask("bitmap", "")


def test_openimages_segmentation_csv_gives_each_box_its_mask_png(tmp_path):
    header = "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks\n"
    rows = "a_m01g317_1.png,a,/m/01g317,1,0.1,0.5,0.2,0.9,0.8,\n,a,/m/01g317,2,0.1,0.5,0.2,0.9,0.8,\n"
    images, _ = _split(parse_openimages((header + rows).encode(), "/img", masks_root="/masks"))
    image = images["/img/a.jpg"]
    (annotation,) = image.annotations
    assert annotation.mask == AnnotationMask("png", "/masks/a_m01g317_1.png")
    assert annotation.box == Box(0.1, 0.2, 0.5, 0.9)
    (rejection,) = image.rejections
    assert rejection.reason is Reason.INVALID_MASK and "no MaskPath" in rejection.detail


# --- masks: pixels -------------------------------------------------------------------------


def test_polygon_pixels_are_those_whose_centre_is_inside():
    square = mask_pixels(AnnotationMask("polygon", ((10, 10, 20, 10, 20, 20, 10, 20),)), 30, 30)
    expected = np.zeros((30, 30), bool)
    expected[10:20, 10:20] = True  # pixels 10..19: centres 10.5..19.5; not 11 x 11 as fillPoly would
    np.testing.assert_array_equal(square, expected)
    # Two polygons are their union; a vertex off the image clips.
    union = mask_pixels(AnnotationMask("polygon", ((0, 0, 5, 0, 5, 5, 0, 5), (-10, 20, 40, 20, 40, 40, -10, 40))),
                        30, 30)
    assert union.sum() == 25 + 30 * 10 and union[29, 0] and union[29, 29]
    # Centres on the diagonal lie on an edge: right of the area, so not in it (a neighbour sharing the edge has them).
    triangle = mask_pixels(AnnotationMask("polygon", ((0, 0, 4, 0, 0, 4),)), 4, 4)
    assert triangle.sum() == 6 and triangle[0].tolist() == [True, True, True, False]


def test_uncompressed_rle_is_column_major_starting_with_background():
    # 2 rows x 3 columns: runs over (0,0) (1,0) (0,1) (1,1) (0,2) (1,2): 1 off, 2 on, 3 off.
    pixels = mask_pixels(AnnotationMask("rle", (1, 2, 3), 3, 2), 3, 2)
    np.testing.assert_array_equal(pixels, [[False, True, False], [True, False, False]])


def test_rle_of_another_size_or_corrupt_raises():
    with pytest.raises(ValueError, match="3x2, the image 2x3"):
        mask_pixels(AnnotationMask("rle", (6,), 3, 2), 2, 3)
    with pytest.raises(ValueError, match="not a compressed RLE character"):
        mask_pixels(AnnotationMask("rle", "not an RLE!", 3, 2), 3, 2)
    with pytest.raises(ValueError, match="cover"):
        mask_pixels(AnnotationMask("rle", "PQ40", 3, 2), 3, 2)


def test_mask_png_is_resized_to_the_image_and_a_missing_one_raises(tmp_path):
    small = np.zeros((5, 10), np.uint8)
    small[:, 5:] = 255
    Image.fromarray(small).save(tmp_path / "m.png")
    pixels = mask_pixels(AnnotationMask("png", str(tmp_path / "m.png")), 20, 10)
    assert pixels.shape == (10, 20) and pixels[:, 10:].all() and not pixels[:, :10].any()
    with pytest.raises(ValueError, match="not found"):
        mask_pixels(AnnotationMask("png", str(tmp_path / "none.png")), 20, 10)
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        mask_pixels(AnnotationMask("png", str(tmp_path / "text.png")), 20, 10)


# pycocotools is the reference implementation of COCO masks; a test-only cross-check, never a dependency.


def _random_mask(rng, height, width) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    for _ in range(4):
        y, x = rng.integers(0, height), rng.integers(0, width)
        mask[y:y + rng.integers(1, height + 1), x:x + rng.integers(1, width + 1)] ^= True
    return mask


def test_compressed_rle_decodes_as_pycocotools_encodes():
    coco_mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (7, 5), (100, 37), (480, 640)]:
        for mask in (_random_mask(rng, height, width), rng.random((height, width)) > 0.5,
                     np.ones((height, width), bool), np.zeros((height, width), bool)):
            encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            decoded = mask_pixels(AnnotationMask("rle", encoded["counts"].decode(), width, height), width, height)
            np.testing.assert_array_equal(decoded, mask)


def test_polygons_rasterise_as_pycocotools_does():
    coco_mask = pytest.importorskip("pycocotools.mask")
    sample = json.loads((SAMPLES / "coco-masks.json").read_text())
    sizes = {image["id"]: (image["width"], image["height"]) for image in sample["images"]}
    polygons = [(a["segmentation"], sizes[a["image_id"]]) for a in sample["annotations"]
                if isinstance(a["segmentation"], list) and a["segmentation"]
                and all(len(p) % 2 == 0 for p in a["segmentation"])]
    polygons.append(([[10.3, 5.7, 33.2, 8.1, 25.5, 30.9, 4.4, 22.2]], (50, 40)))
    assert len(polygons) >= 3
    for segmentation, (width, height) in polygons:
        theirs = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))).astype(bool)
        ours = mask_pixels(AnnotationMask("polygon", tuple(tuple(map(float, p)) for p in segmentation)), width, height)
        # pycocotools snaps vertices to a 1/5-pixel grid: only pixels whose centre is that close to an edge differ.
        assert (ours != theirs).sum() <= 0.01 * theirs.sum() + 2, (ours != theirs).sum()
        assert (ours & theirs).sum() / (ours | theirs).sum() > 0.99


def test_sample_masks_file_has_every_kind_of_mask_and_its_deliberate_faults():
    images, orphans = _split(parse_coco((SAMPLES / "coco-masks.json").read_bytes(), "jobs/samples/images"))
    assert orphans == []
    kinds = {path.rsplit("/", 1)[1]: [(a.label, a.is_crowd, a.mask and a.mask.kind) for a in image.annotations]
             for path, image in images.items()}
    assert kinds == {
        "astronaut.jpg": [("person", False, None), ("rocket", True, "rle"), ("helmet", False, "rle")],
        "coffee.jpg": [("cup", False, "polygon"), ("spoon", False, "polygon")],
        "rocket.jpg": [("rocket", False, "rle")],
    }
    [rejection] = [r for image in images.values() for r in image.rejections]
    assert rejection.reason is Reason.INVALID_MASK and rejection.uri.endswith("rocket.jpg")
    rocket = images["jobs/samples/images/rocket.jpg"].annotations[0]
    pixels = mask_pixels(rocket.mask, 640, 427)
    ys, xs = np.nonzero(pixels)
    # The mask lies inside its box, and fills the rocket's slender shape (a fifth of the box would be far too little).
    assert rocket.box.x0 <= xs.min() and xs.max() < rocket.box.x1
    assert rocket.box.y0 <= ys.min() and ys.max() < rocket.box.y1
    assert pixels.sum() > 0.8 * rocket.box.area


def test_sample_labels_file_is_complete_and_inside_its_images():
    images, orphans = _split(parse_coco((SAMPLES / "coco-labels.json").read_bytes(), "jobs/samples/images"))
    assert orphans == [] and all(image.rejections == () for image in images.values())
    for path, image in images.items():
        assert pathlib.Path(path).exists(), path
        for annotation in image.annotations:
            box = annotation.box
            assert 0 <= box.x0 < box.x1 <= image.width and 0 <= box.y0 < box.y1 <= image.height
            assert box.y1 - box.y0 >= 20, (path, annotation)
    labels = sorted(a.label for image in images.values() for a in image.annotations)
    assert len(labels) == 23 and labels.count("person") == 14 and labels.count("car") == 4
