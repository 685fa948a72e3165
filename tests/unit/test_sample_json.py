"""The ``json`` members of format 3: one schema whatever a sample holds, and older formats still read."""
from __future__ import annotations

import dataclasses
import json

import pytest

from schemas.records import Annotation, AnnotationMask, Box, SourceImage
from schemas.sample import Field, mimic_fields, replay_json, source_from_sample, source_to_sample

ANNOTATED = SourceImage(key="a" * 24, sha256="a" * 64, uri="photos/cup.jpg", width=64, height=48, jpeg=b"\xff\xd8jpeg",
                        annotations=(Annotation("cup", Box(1.0, 2.0, 30.0, 40.0), 47, "coco"),
                                     Annotation("dog", Box(5.0, 5.0, 9.0, 9.0), None, "coco",
                                                mask=AnnotationMask("polygon", ((5.0, 5.0, 9.0, 5.0, 9.0, 9.0),)))))


def test_a_source_s_annotations_are_json_text_and_read_back_as_they_were():
    sample = source_to_sample(ANNOTATED, {"job": "ingest"})
    meta = json.loads(sample[Field.JSON])
    plain = source_to_sample(dataclasses.replace(ANNOTATED, annotations=()), {"job": "ingest"})
    assert isinstance(meta["annotations"], str) and json.loads(plain[Field.JSON])["annotations"] == "[]"
    assert source_from_sample(sample) == ANNOTATED


def test_a_format_2_source_with_a_list_of_annotations_still_reads():
    sample = source_to_sample(ANNOTATED, {"job": "ingest"})
    meta = json.loads(sample[Field.JSON])
    old = {**meta, "format_version": 2, "annotations": json.loads(meta["annotations"])}
    assert source_from_sample({**sample, Field.JSON: json.dumps(old).encode()}) == ANNOTATED


def test_an_augmentation_s_applied_transforms_are_json_text_with_the_omitted_params_null():
    record = {"seed": 3, "albumentations": "2.0", "applied": [
        {"name": "ElasticTransform", "params": {"alpha": 1.0}, "omitted": ["map_x"]}]}
    assert replay_json(record)["applied"] == '[{"name":"ElasticTransform","params":{"alpha":1.0,"map_x":null}}]'
    assert replay_json({**record, "applied": []})["applied"] == "[]"


def test_a_frame_pair_lacking_a_branch_s_facts_is_refused():
    meta = {"branch": "image", "video": {}, "frames": {}, "image": {}}
    with pytest.raises(ValueError, match=r"lacks \['augmentation'\]"):
        mimic_fields("k", b"src", b"ref", b"mask", meta)
