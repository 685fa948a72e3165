"""Decoding of untrusted bytes: one exact reason per broken kind, one exact note per conversion."""
from __future__ import annotations

import concurrent.futures
import io
import sys
import warnings

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFile

from schemas import Note, RawInput, Reason, Rejection, SourceImage, content_sha256, source_key
from tests.unit import broken_inputs as inputs
from transforms.io.decode import DecodeConfig, decode_rgb, decode_source, encode_jpeg

DEFAULT = DecodeConfig()


def decode(data: bytes, config: DecodeConfig = DEFAULT, uri: str = "mem://input") -> SourceImage | Rejection:
    return decode_source(RawInput(uri=uri, data=data), config)


def accepted(data: bytes, config: DecodeConfig = DEFAULT) -> SourceImage:
    result = decode(data, config)
    assert isinstance(result, SourceImage), result
    return result


def pixels_of(data: bytes) -> np.ndarray:
    """Stored pixels, ignoring EXIF orientation: the reference for what decoding changed."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def block_centres(rgb: np.ndarray, count: int) -> np.ndarray:
    centre = inputs.BLOCK // 2
    return rgb[centre, [i * inputs.BLOCK + centre for i in range(count)]].astype(int)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (inputs.empty_file, Reason.EMPTY_FILE),
        (inputs.text_named_jpg, Reason.NOT_AN_IMAGE),
        (inputs.huge_png, Reason.IMAGE_TOO_LARGE),
        (inputs.truncated_jpeg, Reason.TRUNCATED_IMAGE),
        (inputs.corrupt_png, Reason.CORRUPT_IMAGE),
        (inputs.float_tiff, Reason.UNSUPPORTED_MODE),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_each_broken_kind_is_rejected_with_its_own_reason(build, reason):
    data = build()
    result = decode(data, uri="mem://broken.jpg")
    assert isinstance(result, Rejection)
    assert (result.reason, result.stage, result.uri) == (reason, "decode", "mem://broken.jpg")
    assert result.key == source_key(content_sha256(data))
    assert result.detail


@pytest.mark.parametrize(
    ("build", "notes"),
    [
        (inputs.plain_rgb_jpeg, ()),
        (inputs.exif_rotated_jpeg, (Note.EXIF_ORIENTED, Note.REENCODED)),
        (inputs.exif_rotated_tiff, (Note.EXIF_ORIENTED, Note.REENCODED)),
        (inputs.sixteen_bit_grey_png, (Note.FROM_16_BIT, Note.FROM_GRAYSCALE, Note.REENCODED)),
        (inputs.sixteen_bit_rgb_png, (Note.FROM_16_BIT, Note.REENCODED)),
        (inputs.cmyk_jpeg, (Note.FROM_CMYK, Note.REENCODED)),
        (inputs.palette_alpha_png, (Note.FROM_PALETTE, Note.ALPHA_FLATTENED, Note.REENCODED)),
        (inputs.opaque_rgba_png, (Note.REENCODED,)),
        (inputs.grayscale_jpeg, (Note.FROM_GRAYSCALE, Note.REENCODED)),
        (inputs.animated_gif, (Note.FIRST_FRAME_ONLY, Note.FROM_PALETTE, Note.REENCODED)),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_each_edge_kind_is_kept_with_exactly_its_notes(build, notes):
    data = build()
    image = accepted(data)
    assert image.notes == notes
    assert image.key == source_key(image.sha256) and image.sha256 == content_sha256(data)
    rgb = decode_rgb(image.jpeg)
    assert rgb.shape == (image.height, image.width, 3) and rgb.dtype == np.uint8


def test_plain_rgb_jpeg_passes_its_original_bytes_through():
    data = inputs.plain_rgb_jpeg()
    image = accepted(data)
    assert image.jpeg == data
    assert (image.width, image.height) == (256, 256)


def test_reencoding_is_deterministic_and_carries_the_raw_input_fields():
    data = inputs.cmyk_jpeg()
    raw = RawInput(uri="tar://shard.tar#k.jpg", data=data, origin="tar")
    first, second = decode_source(raw, DEFAULT), decode_source(raw, DEFAULT)
    assert first.jpeg == second.jpeg
    assert (first.uri, first.origin) == ("tar://shard.tar#k.jpg", "tar")


def test_exif_orientation_turns_the_stored_pixels_upright():
    data = inputs.exif_rotated_jpeg()
    stored = pixels_of(data)
    image = accepted(data)
    assert (image.width, image.height) == (stored.shape[0], stored.shape[1])  # swapped
    upright = decode_rgb(image.jpeg).astype(int)
    expected = np.rot90(stored, k=-1)  # orientation 6: turn 90 degrees clockwise
    assert np.abs(upright - expected).mean() < 2.0
    assert np.abs(upright - np.rot90(stored, k=1)).mean() > 20.0  # the wrong way is far off
    # OpenCV applies EXIF orientation on its own: an independent opinion on "upright".
    opencv = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(upright - opencv.astype(int)).mean() < 2.0


def test_tiff_orientation_applied_by_pillows_loader_is_still_noted_and_not_applied_twice():
    image = accepted(inputs.exif_rotated_tiff())
    assert Note.EXIF_ORIENTED in image.notes
    upright = decode_rgb(image.jpeg).astype(int)
    assert upright.shape == skimage.data.chelsea().shape
    assert np.abs(upright - skimage.data.chelsea().astype(int)).mean() < 2.0


def test_sixteen_bit_grey_is_scaled_not_clipped():
    rgb = decode_rgb(accepted(inputs.sixteen_bit_grey_png()).jpeg)
    centres = block_centres(rgb, len(inputs.SIXTEEN_BIT_GREYS))
    expected = np.repeat(np.array(inputs.SIXTEEN_BIT_GREYS_AS_8_BIT)[:, None], 3, axis=1)
    np.testing.assert_allclose(centres, expected, atol=1)


def test_sixteen_bit_rgb_is_scaled_not_clipped():
    # Pillow 12 opens a 48-bit PNG as 8-bit "RGB" (raw mode RGB;16B, high byte kept).
    rgb = decode_rgb(accepted(inputs.sixteen_bit_rgb_png()).jpeg)
    centres = block_centres(rgb, len(inputs.SIXTEEN_BIT_COLOURS))
    np.testing.assert_allclose(centres, np.array(inputs.SIXTEEN_BIT_COLOURS_AS_8_BIT), atol=1)


def test_cmyk_comes_back_as_the_colours_it_was_made_from():
    # cmyk_jpeg is coffee() converted to CMYK; Pillow reads Adobe CMYK inverted, and a
    # missed inversion would give a negative (mean error ~100).
    upright = decode_rgb(accepted(inputs.cmyk_jpeg()).jpeg).astype(int)
    assert np.abs(upright - skimage.data.coffee().astype(int)).mean() < 3.0


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0)])
def test_palette_alpha_is_flattened_over_the_configured_background(background):
    config = DecodeConfig(alpha_background=background)
    rgb = decode_rgb(accepted(inputs.palette_alpha_png(), config).jpeg)
    centres = block_centres(rgb, len(inputs.PALETTE_ALPHA))
    bg = np.array(background)
    expected = [np.array(colour) * alpha / 255 + bg * (255 - alpha) / 255 for colour, alpha in inputs.PALETTE_ALPHA]
    np.testing.assert_allclose(centres, np.array(expected), atol=2)


def test_animated_gif_keeps_its_first_frame():
    image = accepted(inputs.animated_gif())
    np.testing.assert_allclose(decode_rgb(image.jpeg)[16, 16], inputs.GIF_FRAMES[0], atol=2)


def test_size_limit_is_the_configured_one_and_reports_the_size():
    data = inputs.plain_rgb_jpeg()  # 256 x 256
    assert isinstance(decode(data, DecodeConfig(max_pixels=256 * 256)), SourceImage)
    result = decode(data, DecodeConfig(max_pixels=256 * 256 - 1))
    assert result.reason is Reason.IMAGE_TOO_LARGE
    assert "256x256" in result.detail


def test_oversized_headers_never_leak_pillows_warning_or_error():
    # 10000 x 10000 lies between Pillow's warning (MAX_IMAGE_PIXELS) and error (twice that)
    # thresholds; 40000 x 40000 is above both.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        between = decode(inputs.huge_png(10_000, 10_000))
        above = decode(inputs.huge_png())
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert between.reason is Reason.IMAGE_TOO_LARGE and "10000x10000" in between.detail
    assert above.reason is Reason.IMAGE_TOO_LARGE and "1600000000" in above.detail
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_formats_outside_the_allow_list_are_not_parsed():
    config = DecodeConfig(formats=("JPEG",))
    result = decode(inputs.palette_alpha_png(), config)
    assert result.reason is Reason.UNSUPPORTED_FORMAT and "PNG" in result.detail


def test_a_damaged_header_with_an_image_signature_is_corrupt_not_a_non_image():
    data = inputs.palette_alpha_png()
    damaged = data[:16] + bytes(len(data) - 16)  # PNG signature, IHDR zeroed
    assert decode(damaged).reason is Reason.CORRUPT_IMAGE


def test_truncation_is_detected_without_loading_truncated_images_globally():
    assert decode(inputs.truncated_jpeg()).reason is Reason.TRUNCATED_IMAGE
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_unexpected_exceptions_propagate(monkeypatch):
    def broken_load(self):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(RuntimeError, match="a bug"):
        decode(inputs.plain_rgb_jpeg())


def test_concurrent_decoding_leaves_warning_filters_as_they_were():
    # Beam runs bundles in threads; unserialised catch_warnings blocks restore each other's
    # filter lists. A tiny switch interval makes that interleaving likely enough to see.
    kinds = {inputs.huge_png(): Rejection, inputs.plain_rgb_jpeg(): SourceImage, inputs.cmyk_jpeg(): SourceImage}
    datas = list(kinds) * 100
    before = list(warnings.filters)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(decode, datas))
    finally:
        sys.setswitchinterval(interval)
    assert list(warnings.filters) == before
    assert [type(r) for r in results] == [kinds[data] for data in datas]


def test_encode_jpeg_round_trips_and_checks_its_input():
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, 8:] = (200, 30, 90)  # an edge on the 8x8 grid: both sides stay flat
    data = encode_jpeg(rgb, 95)
    assert data == encode_jpeg(rgb, 95)
    np.testing.assert_allclose(decode_rgb(data), rgb, atol=2)
    with pytest.raises(ValueError):
        encode_jpeg(rgb.astype(np.float32), 95)
    with pytest.raises(ValueError):
        encode_jpeg(rgb[..., 0], 95)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_pixels": 0},
        {"max_pixels": True},
        {"jpeg_quality": 0},
        {"jpeg_quality": 101},
        {"alpha_background": (255, 255)},
        {"alpha_background": (0, 0, 256)},
        {"formats": ()},
        {"formats": ("NOT-A-FORMAT",)},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        DecodeConfig(**kwargs)


def test_config_accepts_yaml_style_lists():
    config = DecodeConfig(alpha_background=[0, 0, 0], formats=["JPEG", "PNG"])
    assert config.alpha_background == (0, 0, 0) and config.formats == ("JPEG", "PNG")
    hash(config)


def test_sample_files_are_the_builders_bytes(tmp_path):
    paths = inputs.write_all(tmp_path)
    assert sorted(p.name for p in paths) == sorted(inputs.SAMPLE_FILES)
    for path in paths:
        assert path.read_bytes() == inputs.SAMPLE_FILES[path.name]()
