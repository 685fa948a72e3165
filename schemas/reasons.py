"""Stable codes for what happened to a record.

The string values are a public contract: they appear in stats.json, rejected.parquet and
the review app, and dashboards group by them. Never rename or reuse a value; add new
members instead.
"""
from __future__ import annotations

import enum


class Reason(str, enum.Enum):
    """Why a record was rejected (an expected outcome, not an error)."""

    # Reading
    EMPTY_FILE = "empty_file"
    UNSUPPORTED_EXTENSION = "unsupported_extension"
    IMAGE_MISSING = "image_missing"
    CORRUPT_SHARD = "corrupt_shard"
    SAMPLE_WITHOUT_IMAGE = "sample_without_image"
    # Decoding
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED_IMAGE = "truncated_image"
    CORRUPT_IMAGE = "corrupt_image"
    IMAGE_TOO_LARGE = "image_too_large"
    UNSUPPORTED_MODE = "unsupported_mode"
    # Deduplication
    DUPLICATE_CONTENT = "duplicate_content"
    # Annotations
    INVALID_BOX = "invalid_box"
    # Segmentation
    MASK_EMPTY = "mask_empty"
    MASK_LOW_IOU = "mask_low_iou"
    MASK_FRAGMENTED = "mask_fragmented"
    MASK_BOX_FILL = "mask_box_fill"

    def __str__(self) -> str:
        return self.value


class Note(str, enum.Enum):
    """What decoding changed to make an accepted image 8-bit sRGB-ish RGB, upright.

    Notes are not rejections: the image is kept, and the note is recorded in its
    metadata so that a reviewer can find, say, every CMYK source.
    """

    EXIF_ORIENTED = "exif_oriented"
    FROM_16_BIT = "from_16_bit"
    FROM_CMYK = "from_cmyk"
    FROM_PALETTE = "from_palette"
    FROM_GRAYSCALE = "from_grayscale"
    ALPHA_FLATTENED = "alpha_flattened"
    FIRST_FRAME_ONLY = "first_frame_only"
    REENCODED = "reencoded"

    def __str__(self) -> str:
        return self.value


class Outcome(str, enum.Enum):
    """The terminal outcome of one input in a run's ledger."""

    WRITTEN = "written"
    REJECTED = "rejected"
    DEAD_LETTER = "dead_letter"

    def __str__(self) -> str:
        return self.value
