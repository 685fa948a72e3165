"""Composites with a known counterfactual: real object cut-outs pasted onto other real images.

The photo before the paste is the exact removal target, so a composite sample is both
removal training data with a perfect target (SmartEraser's Syn4Removal, ObjectClear's
simulated set) and the ground truth every removal score is judged on (``evaluate``).

    background image + cut-outs (side input) --MakeComposites--> per image, ``per_image``
      attempts: a cut-out from *another* image, scaled to an area fraction, placed fully
      inside and clear of the objects known in the background --SplitComposites--> samples

Placement draws from a generator seeded by the base seed and the composite's key, so a
composite is the same on every worker and run. The stages follow :mod:`transforms.pbe`:
:class:`MakeComposites` decides an image and its attempts at once (one record per image
in the main ledger), :class:`SplitComposites` opens the composite ledger.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.pvalue import AsList, AsMultiMap, TaggedOutput
from PIL import Image

from schemas import Box, Reason, Rejection, SourceImage
from schemas.keys import composite_key, derived_seed
from schemas.sample import composite_fields, composite_metadata_row
from transforms.checks import check_jpeg_quality, check_seed, is_integral, is_number
from transforms.io.decode import decode_rgb, encode_jpeg
from transforms.io.shards import EncodedSample
from transforms.masks import encode_matte_png
from transforms.models.removal import encode_png
from transforms.stage import UNPAIRED_TAG, Paired, RecordFunction, SplitOutcomes, Stage

#: The composite ledger: every attempt ends as a written composite or a rejection.
COMPOSITES = "composites"

@dataclasses.dataclass(frozen=True)
class Cutout:
    """An object to paste: its RGBA cut-out, its label, and the image (and objects) it came from."""

    key: str
    label: str
    source_key: str
    uri: str
    box: Box
    png: bytes


@dataclasses.dataclass(frozen=True)
class CompositeConfig:
    """How composites are made.

    ``per_image``: attempts per background (each a different cut-out draw).
    ``area_fraction_range``: the pasted object's area (its alpha, summed) as a fraction
    of the background's, drawn log-uniformly once per attempt (a cut-out too large for the
    image is shrunk to fit). ``max_tries``: positions tried per attempt before it is
    rejected ``no_placement``. ``max_upscale``: a cut-out is never enlarged more than this
    (a small object blown up is mostly blur). ``seed``: the base seed.
    """

    per_image: int = 6
    area_fraction_range: tuple[float, float] = (0.01, 0.12)
    max_tries: int = 50
    max_upscale: float = 3.0
    seed: int = 0
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if not is_integral(self.per_image) or not 1 <= self.per_image <= 100:
            raise ValueError(f"per_image must be an integer in [1, 100], got {self.per_image!r}")
        low_high = tuple(self.area_fraction_range)
        if len(low_high) != 2 or not all(is_number(v) for v in low_high) or not 0 < low_high[0] <= low_high[1] < 1:
            raise ValueError(f"area_fraction_range must be [low, high] with 0 < low <= high < 1, "
                             f"got {self.area_fraction_range!r}")
        object.__setattr__(self, "area_fraction_range", (float(low_high[0]), float(low_high[1])))
        if not is_integral(self.max_tries) or self.max_tries < 1:
            raise ValueError(f"max_tries must be a positive integer, got {self.max_tries!r}")
        if not is_number(self.max_upscale) or self.max_upscale < 1:
            raise ValueError(f"max_upscale must be a number >= 1, got {self.max_upscale!r}")
        check_seed(self.seed)
        check_jpeg_quality(self.jpeg_quality, minimum=50)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a cut-out goes: its scaled size and top-left corner in the background, in pixels."""

    x0: int
    y0: int
    width: int
    height: int
    scale: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x0 + self.width, self.y0 + self.height


def _overlaps(box: tuple[int, int, int, int], other: Box) -> bool:
    return box[0] < other.x1 and other.x0 < box[2] and box[1] < other.y1 and other.y0 < box[3]


def place(alpha: np.ndarray, width: int, height: int, avoid: Sequence[Box], config: CompositeConfig,
          rng: np.random.Generator) -> Optional[Placement]:
    """A placement of a cut-out with ``alpha`` in a ``width`` x ``height`` image, or ``None`` after ``max_tries``.

    Fully inside the image, its box clear of every box in ``avoid`` (the objects known
    there: pasting over one would make the "truth" hide a real object).
    """
    alpha_area = float(alpha.sum()) / 255.0
    if alpha_area <= 0:
        return None
    # One size per attempt, drawn before any position: retrying sizes would favour small objects.
    low, high = config.area_fraction_range
    fraction = math.exp(rng.uniform(math.log(low), math.log(high)))
    scale = min(math.sqrt(fraction * width * height / alpha_area), config.max_upscale)
    cut_h, cut_w = alpha.shape
    w, h = max(1, round(cut_w * scale)), max(1, round(cut_h * scale))
    if w > width or h > height:
        scale *= min(width / w, height / h)
        w, h = min(width, max(1, round(cut_w * scale))), min(height, max(1, round(cut_h * scale)))
    for _ in range(config.max_tries):
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        placement = Placement(x0, y0, w, h, scale)
        if not any(_overlaps(placement.box, other) for other in avoid):
            return placement
    return None


def _scaled_rgba(rgba: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out resized with premultiplied alpha (no dark fringe): straight RGB float and alpha in [0, 1]."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    premultiplied = np.concatenate([rgba[..., :3].astype(np.float32) * alpha, alpha], axis=2)
    shrinking = width < rgba.shape[1]
    resized = cv2.resize(premultiplied, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    a = np.clip(resized[..., 3], 0.0, 1.0)
    rgb = np.where(a[..., None] > 1e-6, resized[..., :3] / np.maximum(a[..., None], 1e-6), 0.0)
    return np.clip(rgb, 0, 255), a


@dataclasses.dataclass(frozen=True)
class Composite:
    """The composite (as decoded from its JPEG), its 8-bit matte, and the exact removal target."""

    jpeg: bytes
    matte: np.ndarray
    truth: np.ndarray


def make_composite(background: np.ndarray, rgba: np.ndarray, placement: Placement, jpeg_quality: int) -> Composite:
    """Paste ``rgba`` at ``placement``; the truth is the background inside the matte and the composite elsewhere.

    The composite is stored as a JPEG like every source; taking the truth's outside pixels
    from the *decoded* JPEG makes input and target equal outside the matte, exactly.
    """
    rgb, a = _scaled_rgba(rgba, placement.width, placement.height)
    x0, y0, x1, y1 = placement.box
    out = background.astype(np.float32)
    patch = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = patch * (1.0 - a[..., None]) + rgb * a[..., None]
    matte = np.zeros(background.shape[:2], np.uint8)
    matte[y0:y1, x0:x1] = np.round(a * 255.0).astype(np.uint8)
    jpeg = encode_jpeg(np.round(out).astype(np.uint8), jpeg_quality)
    truth = np.where((matte > 0)[..., None], background, decode_rgb(jpeg))
    return Composite(jpeg, matte, truth)


def _decode_cutout(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png), formats=("PNG",)) as image:
        return np.array(image.convert("RGBA"))


@dataclasses.dataclass(frozen=True)
class ImageComposites:
    """One background and the outcome of each attempt on it: a composite to write, or its rejection."""

    uri: str
    key: str
    composites: tuple[EncodedSample | Rejection, ...]


def _attempt(config: CompositeConfig, provenance: Mapping[str, Any], source: SourceImage, background: np.ndarray,
             avoid: Sequence[Box], key: str, cutout: Cutout) -> EncodedSample | Rejection:
    rng = np.random.default_rng(derived_seed(config.seed, "placement", key))
    rgba = _decode_cutout(cutout.png)
    placement = place(rgba[..., 3], source.width, source.height, avoid, config, rng)
    if placement is None:
        return Rejection(source.uri, MakeComposites.stage, Reason.NO_PLACEMENT,
                         f"{cutout.key} ({rgba.shape[1]}x{rgba.shape[0]}) fits nowhere clear of "
                         f"{len(avoid)} known objects in {config.max_tries} tries", key)
    composite = make_composite(background, rgba, placement, config.jpeg_quality)
    area_fraction = float(composite.matte.sum()) / 255.0 / (source.width * source.height)
    record = {"seed": config.seed, "box": list(placement.box), "scale": placement.scale,
              "area_fraction": area_fraction, "avoided_boxes": len(avoid)}
    fields = composite_fields(source, key, cutout, record, composite.jpeg, encode_matte_png(composite.matte),
                              encode_png(composite.truth), provenance)
    return EncodedSample(key=key, fields=fields, metadata=composite_metadata_row(source, key, cutout, record))


class Background(NamedTuple):
    """One background with what its attempts need: per attempt key its cut-out, and the objects known there.

    ``attempts`` is empty when no cut-out comes from another image.
    """

    source: SourceImage
    attempts: tuple[tuple[str, Cutout], ...]
    known_boxes: tuple[Box, ...]

    @property
    def uri(self) -> str:
        return self.source.uri

    @property
    def key(self) -> str:
        return self.source.key


def draw_cutouts(config: CompositeConfig, source: SourceImage, cutouts: Sequence[Cutout], known_boxes) -> Background:
    """Each attempt's cut-out, drawn (seeded by its key) from those of *other* images; ``known_boxes``: a multimap."""
    others = sorted((c for c in cutouts if c.source_key != source.key and c.uri != source.uri), key=lambda c: c.key)
    attempts = []
    if others:
        for index in range(config.per_image):
            key = composite_key(source.key, index)
            rng = np.random.default_rng(derived_seed(config.seed, "cutout", key))
            attempts.append((key, others[int(rng.integers(len(others)))]))
    try:
        known = tuple(known_boxes[source.key])  # Beam's multimap gives [] for a key it lacks, a dict raises
    except KeyError:
        known = ()
    return Background(source, tuple(attempts), known)


def _make_composites(config: CompositeConfig, provenance: Mapping[str, Any], background: Background) -> Iterator[Any]:
    stage = MakeComposites.stage
    source = background.source
    if not background.attempts:
        reason = "no cut-out comes from another image"
        yield TaggedOutput(UNPAIRED_TAG, ImageComposites(source.uri, source.key, tuple(
            Rejection(source.uri, stage, Reason.NO_CUTOUT, reason, composite_key(source.key, index))
            for index in range(config.per_image))))
        yield Rejection(source.uri, stage, Reason.NO_CUTOUT, reason, source.key)
        return
    rgb = decode_rgb(source.jpeg)
    outcomes = tuple(_attempt(config, provenance, source, rgb, background.known_boxes, key, cutout)
                     for key, cutout in background.attempts)
    if not any(isinstance(outcome, EncodedSample) for outcome in outcomes):
        yield TaggedOutput(UNPAIRED_TAG, ImageComposites(source.uri, source.key, outcomes))
        yield Rejection(source.uri, stage, Reason.NO_PLACEMENT, f"no placement in {len(outcomes)} attempts", source.key)
        return
    yield ImageComposites(source.uri, source.key, outcomes)


class MakeComposites(Stage):
    """Backgrounds -> one :class:`ImageComposites` per image: ``per_image`` attempts, each a composite or its rejection.

    Cut-outs and the boxes of objects known per background (``(source_key, Box)``) come
    as side inputs. An image with no cut-out from another image is rejected ``no_cutout``,
    one none of whose attempts found a placement ``no_placement``; either record goes to
    ``unpaired`` so that its attempts are still accounted.
    """

    stage = "composites"
    extra_tags = (UNPAIRED_TAG,)

    def __init__(self, config: CompositeConfig, provenance: Mapping[str, Any], cutouts: beam.PCollection,
                 boxes: beam.PCollection) -> None:
        super().__init__()
        self._config = config
        self._provenance = dict(provenance)
        self._cutouts = cutouts
        self._boxes = boxes

    def prepare(self, sources: beam.PCollection) -> beam.PCollection:
        return sources | "DrawCutouts" >> beam.Map(functools.partial(draw_cutouts, self._config),
                                                   AsList(self._cutouts), AsMultiMap(self._boxes))

    def record_fn(self) -> RecordFunction:
        return functools.partial(_make_composites, self._config, self._provenance)

    def expand(self, sources: beam.PCollection) -> Paired:
        return Paired.of(self.apply_stage(sources))


def _composite_outcomes(record: ImageComposites) -> tuple[EncodedSample | Rejection, ...]:
    return record.composites


class SplitComposites(SplitOutcomes):
    """:class:`ImageComposites` -> their attempts, each a composite to write or its rejection."""

    stage = "composite_attempts"
    unit = COMPOSITES
    parts = staticmethod(_composite_outcomes)


def cutout_of(meta: Mapping[str, Any], object_png: bytes) -> Cutout:
    """The cut-out of a candidate sample (its parsed json and ``object.png``)."""
    source = meta["source"]
    return Cutout(key=meta["key"], label=meta["detection"]["label"], source_key=source["key"], uri=source["uri"],
                  box=Box(*meta["detection"]["box"]), png=object_png)
