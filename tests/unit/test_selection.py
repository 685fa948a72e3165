"""Suitable-object selection: each rule rejects exactly what it should, with its reason."""
from __future__ import annotations

import pytest

from schemas import Box, Detection, Reason
from transforms.selection import SelectionConfig, duplicates, overlap_share, select_objects

W, H = 1000, 500


def det(label: str, score: float, box: tuple[float, float, float, float]) -> Detection:
    return Detection(label=label, class_id=0, score=score, box=Box(*box), detector="test")


def reasons(selection) -> dict[int, Reason]:
    return {index: reason for index, reason, _ in selection.rejected}


def test_a_clean_object_is_kept():
    selection = select_objects([det("cup", 0.9, (100, 100, 300, 300))], W, H, SelectionConfig())
    assert selection.kept == (0,) and selection.rejected == ()


@pytest.mark.parametrize(
    ("config", "detection", "reason"),
    [
        (SelectionConfig(allow_labels=("person",)), det("cup", 0.9, (100, 100, 300, 300)), Reason.LABEL_NOT_ALLOWED),
        (SelectionConfig(deny_labels=("cup",)), det("cup", 0.9, (100, 100, 300, 300)), Reason.LABEL_DENIED),
        (SelectionConfig(min_score=0.5), det("cup", 0.49, (100, 100, 300, 300)), Reason.LOW_SCORE),
        # 20x20 of 1000x500 is 0.0008 of the image.
        (SelectionConfig(min_area_fraction=0.001), det("cup", 0.9, (100, 100, 120, 120)), Reason.OBJECT_TOO_SMALL),
        (SelectionConfig(max_area_fraction=0.5), det("cup", 0.9, (0, 0, 800, 400)), Reason.OBJECT_TOO_LARGE),
        # 5 px from the top of a 500 px high image is 0.01 of it.
        (SelectionConfig(min_border_fraction=0.02), det("cup", 0.9, (100, 5, 300, 300)), Reason.TRUNCATED_BY_BORDER),
    ],
)
def test_each_rule_rejects_with_its_reason(config, detection, reason):
    selection = select_objects([detection], W, H, config)
    assert selection.kept == ()
    assert reasons(selection) == {0: reason}


@pytest.mark.parametrize(
    ("config", "detection"),
    [
        (SelectionConfig(min_score=0.5), det("cup", 0.5, (100, 100, 300, 300))),  # bounds are inclusive
        (SelectionConfig(min_border_fraction=0.01), det("cup", 0.9, (100, 5, 300, 300))),
        (SelectionConfig(allow_labels=("cup",), deny_labels=("person",)), det("cup", 0.9, (100, 100, 300, 300))),
    ],
)
def test_objects_at_the_limits_pass(config, detection):
    assert select_objects([detection], W, H, config).kept == (0,)


def test_occluded_object_is_rejected_and_its_occluder_kept():
    front = det("person", 0.9, (100, 100, 300, 400))
    behind = det("chair", 0.8, (250, 100, 350, 400))  # half of it behind the person
    selection = select_objects([front, behind], W, H, SelectionConfig(max_overlap=0.4))
    assert selection.kept == (0,)
    assert reasons(selection) == {1: Reason.OCCLUDED}
    assert overlap_share(behind.box, front.box) == pytest.approx(0.5)


def test_a_second_label_on_the_same_object_is_a_duplicate_not_an_occluder():
    car = det("car", 0.6, (100, 100, 300, 200))
    truck = det("truck", 0.4, (105, 100, 300, 205))
    selection = select_objects([car, truck], W, H, SelectionConfig(duplicate_iou=0.7, max_overlap=0.3))
    assert selection.kept == (0,)
    assert reasons(selection) == {1: Reason.DUPLICATE_DETECTION}
    assert duplicates([car, truck], 0.7) == (None, 0)


def test_max_objects_keeps_the_best_scored():
    boxes = [det("cup", score, (100 * i + 10, 100, 100 * i + 90, 180)) for i, score in enumerate((0.5, 0.9, 0.7))]
    selection = select_objects(boxes, W, H, SelectionConfig(max_objects=2))
    assert selection.kept == (1, 2)
    assert reasons(selection) == {0: Reason.TOO_MANY_OBJECTS}


def test_first_failing_rule_is_the_reason():
    detection = det("cup", 0.1, (100, 100, 102, 102))  # low score and tiny
    assert reasons(select_objects([detection], W, H, SelectionConfig())) == {0: Reason.LOW_SCORE}


@pytest.mark.parametrize(
    "settings",
    [
        {"min_score": 1.5},
        {"min_area_fraction": 0.5, "max_area_fraction": 0.4},
        {"max_objects": 0},
        {"allow_labels": ("cup",), "deny_labels": ("cup",)},
        {"allow_labels": ("",)},
        {"min_border_fraction": 0.5},
        {"min_image_side": True},
    ],
)
def test_invalid_settings_are_refused(settings):
    with pytest.raises(ValueError):
        SelectionConfig(**settings)


def test_yaml_lists_become_tuples():
    assert SelectionConfig(allow_labels=["person", "cup"]).allow_labels == ("person", "cup")


def test_a_larger_box_holding_the_whole_object_is_a_surface_not_an_occluder():
    table = det("dining table", 0.5, (0, 100, 1000, 500))
    cup = det("cup", 0.4, (400, 200, 500, 300))
    config = SelectionConfig(max_area_fraction=1.0)
    assert select_objects([table, cup], W, H, config).kept == (0, 1)
    half_on_the_table = det("cup", 0.4, (400, 50, 500, 150))
    assert reasons(select_objects([table, half_on_the_table], W, H, SelectionConfig(max_area_fraction=1.0,
                                                                                   max_overlap=0.4))) == {1: Reason.OCCLUDED}


def test_a_box_at_exactly_the_duplicate_iou_is_a_duplicate():
    # Boxes of area 100 overlapping in 60: IoU 60 / 140 = 3/7. At min IoU 3/7 it is a duplicate, just above it is not.
    first, second = det("car", 0.9, (0, 0, 10, 10)), det("truck", 0.8, (4, 0, 14, 10))
    assert duplicates([first, second], 60 / 140) == (None, 0)
    assert duplicates([first, second], 60 / 140 + 1e-9) == (None, None)
