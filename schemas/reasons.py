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
    SAMPLE_DIGEST_MISMATCH = "sample_digest_mismatch"
    SAMPLE_WITHOUT_IMAGE = "sample_without_image"
    NOT_A_REGULAR_FILE = "not_a_regular_file"
    DANGLING_SYMLINK = "dangling_symlink"
    SYMLINK_LOOP = "symlink_loop"
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
    INVALID_MASK = "invalid_mask"
    CROWD_BOX = "crowd_box"
    # Object selection (per image, then per detection)
    IMAGE_TOO_SMALL = "image_too_small"
    NO_DETECTIONS = "no_detections"
    NO_SUITABLE_OBJECT = "no_suitable_object"
    LABEL_NOT_ALLOWED = "label_not_allowed"
    LABEL_DENIED = "label_denied"
    DUPLICATE_DETECTION = "duplicate_detection"
    LOW_SCORE = "low_score"
    OBJECT_TOO_SMALL = "object_too_small"
    OBJECT_TOO_LARGE = "object_too_large"
    TRUNCATED_BY_BORDER = "truncated_by_border"
    OCCLUDED = "occluded"
    TOO_MANY_OBJECTS = "too_many_objects"
    # Segmentation
    MASK_EMPTY = "mask_empty"
    MASK_LOW_IOU = "mask_low_iou"
    MASK_FRAGMENTED = "mask_fragmented"
    MASK_BOX_FILL = "mask_box_fill"
    # Bootstrap outcome of an image whose every object was rejected
    NO_OBJECT_KEPT = "no_object_kept"
    # Build: reading candidate shards
    NOT_A_CANDIDATE_SAMPLE = "not_a_candidate_sample"
    # Build: an object none of whose removal candidates passes (the reason of the closest one)
    BACKGROUND_CHANGED = "background_changed"
    NOTHING_REMOVED = "nothing_removed"
    OBJECT_STILL_DETECTED = "object_still_detected"
    OBJECT_NOT_GONE = "object_not_gone"
    VISIBLE_SEAM = "visible_seam"
    HOLE_TOO_LARGE = "hole_too_large"
    HOLE_TOO_DEEP = "hole_too_deep"
    TEXTURED_SURROUND = "textured_surround"
    CONTRASTED_SURROUND = "contrasted_surround"
    CANDIDATES_DISAGREE = "candidates_disagree"
    TEXTURE_MISMATCH = "texture_mismatch"
    COLOUR_MISMATCH = "colour_mismatch"
    LOW_QUALITY = "low_quality"
    SCORE_MISSING = "score_missing"
    # Build: a reviewer's decision
    REVIEW_REJECTED = "review_rejected"
    # Self-reference pairs (Paint-by-Example): box filters
    BOX_TOO_SMALL = "box_too_small"
    BOX_TOO_LARGE = "box_too_large"
    BOX_SIDE_TOO_SHORT = "box_side_too_short"
    BOX_ASPECT_RATIO = "box_aspect_ratio"
    NO_SUITABLE_BOX = "no_suitable_box"
    NO_BOXES = "no_boxes"
    # Self-reference benchmark (COCOEE-style)
    MULTIPLE_OBJECTS = "multiple_objects"
    MASK_TOO_LARGE = "mask_too_large"
    NO_REFERENCE_IMAGE = "no_reference_image"
    # Video frame pairs (MimicBrush): videos
    NOT_A_VIDEO = "not_a_video"
    NO_VIDEO_STREAM = "no_video_stream"
    EMPTY_VIDEO = "empty_video"
    CORRUPT_VIDEO = "corrupt_video"
    VIDEO_TOO_SHORT = "video_too_short"
    NO_FRAME_PAIR = "no_frame_pair"
    NEAR_DUPLICATE_VIDEO = "near_duplicate_video"
    # Video frame pairs (MimicBrush), pairs
    FRAMES_TOO_SIMILAR = "frames_too_similar"
    FRAMES_UNRELATED = "frames_unrelated"
    TOO_FEW_MATCHES = "too_few_matches"
    OVER_MIX_RATIO = "over_mix_ratio"
    # Composites with a known counterfactual
    NO_CUTOUT = "no_cutout"
    NO_PLACEMENT = "no_placement"
    NOT_A_COMPOSITE_SAMPLE = "not_a_composite_sample"

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
