"""--where parsing and evaluation, --max-per selection."""

from __future__ import annotations

import re

import numpy as np
import pytest

from messai.errors import ConfigError
from messai.search.filters import limit_per_label, parse_where

LABELS = [
    {"composer": "Bach", "year": "1900"},
    {"composer": "Bach", "year": "1850"},
    {"composer": "Liszt"},
    None,
    {"composer": "O'Neil", "year": "n/a"},
]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("composer = 'Bach' AND year >= 1900", [1, 0, 0, 0, 0]),
        ("composer = 'Bach' and year >= 1900", [1, 0, 0, 0, 0]),
        ("NOT composer IN ('Bach')", [0, 0, 1, 1, 1]),
        ("composer NOT IN ('Bach', 'Liszt') OR year < 1860", [0, 1, 0, 1, 1]),
        ("(composer = 'Liszt' OR composer = 'O''Neil')", [0, 0, 1, 0, 1]),
        ("year != 1900", [0, 1, 0, 0, 0]),
        ("`composer` > 'C'", [0, 0, 1, 0, 1]),
        ('composer == "Bach" AND NOT (year = 1850)', [1, 0, 0, 0, 0]),
        ("year = 'n/a'", [0, 0, 0, 0, 1]),
    ],
)
def test_where_mask(text, expected):
    assert parse_where(text).mask(LABELS).astype(int).tolist() == expected


def test_where_equals_row_by_row_python():
    rng = np.random.default_rng(0)
    labels = [{"a": str(rng.integers(0, 5)), "b": f"x{rng.integers(0, 3)}"} for _ in range(200)]
    where = parse_where("(a >= 2 AND b != 'x1') OR a IN (0, 4)")
    expected = [(int(d["a"]) >= 2 and d["b"] != "x1") or int(d["a"]) in (0, 4) for d in labels]
    assert where.mask(labels).tolist() == expected
    assert where.matches(labels[0]) == expected[0]


@pytest.mark.parametrize(
    "text,message",
    [
        ("composer = ", "expected a 'text' or a number at 12"),
        ("composer 'Bach'", "expected a comparison"),
        ("(a = 1", "expected ')'"),
        ("a = 1 b = 2", "expected AND, OR or the end at 7"),
        ("a = 1; DROP TABLE x", "unexpected '; DROP TABLE'"),
        ("a IN 1", "expected '(' after IN"),
        ("__import__('os') = 1", "expected a comparison"),
        ("", "empty filter"),
    ],
)
def test_where_syntax_error_is_one_line(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_where(text)
    assert "\n" not in str(info.value)


def test_unknown_column_is_named():
    parse_where("composer = 'Bach' AND year > 1").check_columns({"composer", "year"})
    where = parse_where("composr = 'Bach' AND year > 1")
    with pytest.raises(ConfigError, match="unknown column 'composr' .labels here: composer, year"):
        where.check_columns({"composer", "year"})


def test_limit_per_label_keeps_rank_order():
    labels = [{"c": "a"}, {"c": "a"}, {"c": "b"}, {"c": "a"}, {}, {"c": "b"}, {"c": "b"}]
    assert limit_per_label(labels, "c", 2) == [0, 1, 2, 4, 5]
    assert limit_per_label(labels, "c", 1) == [0, 2, 4]
    with pytest.raises(ConfigError):
        limit_per_label(labels, "c", 0)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 300 + "composer = 'Bach'" + ")" * 300,
        "NOT " * 2000 + "composer = 'Bach'",
        "(NOT " * 1000 + "composer = 'Bach'" + ")" * 1000,
    ],
    ids=["300 parentheses", "2000 NOTs", "mixed"],
)
def test_deep_nesting_is_one_line_not_a_recursion_error(text):
    with pytest.raises(ConfigError, match=r"nested more than 64 levels") as info:
        parse_where(text)
    assert "\n" not in str(info.value)


def test_nesting_up_to_the_bound_still_works():
    from messai.search.filters import MAX_DEPTH

    text = "(" * MAX_DEPTH + "composer = 'Bach'" + ")" * MAX_DEPTH
    assert parse_where(text).mask(LABELS).astype(int).tolist() == [1, 1, 0, 0, 0]
    even = "NOT " * (MAX_DEPTH - MAX_DEPTH % 2) + "composer = 'Bach'"
    assert parse_where(even).mask(LABELS).astype(int).tolist() == [1, 1, 0, 0, 0]
