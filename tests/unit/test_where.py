"""The ``--where`` predicate: what it selects, and that nothing outside its whitelist gets through."""
from __future__ import annotations

import pytest

from transforms.where import WhereError, compile_where

ROWS = [
    {"key": "a", "quality": 0.9, "label": "cup", "reviewer": None, "reviewed": True},
    {"key": "b", "quality": 0.7, "label": "dog", "reviewer": "ana", "reviewed": False},
    {"key": "c", "quality": 0.85, "label": "car", "reviewer": None, "reviewed": False},
    {"key": "d", "quality": None, "label": "dog", "reviewer": "bo", "reviewed": True},
    {"key": "e", "quality": 0.8, "label": "dog", "reviewer": None, "reviewed": False},
]
COLUMNS = ROWS[0].keys()


def select(expression: str) -> list[str]:
    predicate = compile_where(expression, COLUMNS)
    return [row["key"] for row in ROWS if predicate(row)]


@pytest.mark.parametrize("expression, keys", [
    ('quality >= 0.8 and label in ("cup", "dog")', ["a", "e"]),
    ("quality >= 0.8 or label == 'dog'", ["a", "b", "c", "d", "e"]),
    ("not quality < 0.8", ["a", "c", "d", "e"]),  # null: the comparison is false, so 'not' keeps d
    ("label not in ['dog']", ["a", "c"]),
    ("0.75 < quality <= 0.85", ["c", "e"]),
    ("reviewer == None", []),  # nulls compare false, as in SQL
    ("reviewer != 'ana'", ["d"]),
    ("reviewed", ["a", "d"]),
    ("quality > -1 and not (label == 'car' or label == 'cup')", ["b", "e"]),
])
def test_selects_the_rows_the_expression_describes(expression, keys):
    assert select(expression) == keys


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('true')", "Call is not allowed"),
    ("label.startswith('c')", "Call is not allowed"),
    ("label.upper == 'C'", "Attribute 'label.upper' is not allowed"),
    ("label[0] == 'c'", "Subscript"),
    ("quality * 2 > 1", "BinOp"),
    ("b'x' == label", "Constant"),
    ("label in label", "need a tuple or list of literals"),
    ("label in (key,)", "Name 'key' is not allowed"),
    ("quality == (1, 2)", "need a tuple or list of literals"),
    ("lambda: 1", "Lambda is not allowed"),
    ("[x for x in key]", "ListComp is not allowed"),
    ("colour == 'red'", "unknown column 'colour'"),
    ("quality >=", "cannot parse"),
    ("label is None", "operator Is is not allowed"),
])
def test_anything_outside_the_whitelist_is_refused_before_any_row_is_read(expression, message):
    with pytest.raises(WhereError, match=message):
        compile_where(expression, COLUMNS)
