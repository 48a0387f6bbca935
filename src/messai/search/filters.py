"""``--where`` filters over track labels: a small, safe grammar, never ``eval``.

Grammar (keywords case-insensitive)::

    expr    := or
    or      := and ("OR" and)*
    and     := not ("AND" not)*
    not     := "NOT" not | atom
    atom    := "(" expr ")" | column op value | column ["NOT"] "IN" "(" value ("," value)* ")"
    op      := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    value   := 'text' | "text" | number
    column  := a name of letters, digits, "_", "-", "." (or `any text` in backquotes)

Labels are strings. A comparison with a number compares numerically where the label parses as
a number (``year >= 1900``); with a text it compares text. A track without the label, or whose
label is not a number where a number is asked for, does not match the comparison (and ``NOT``
of it does). Columns must exist among the store's labels: a typo is an error naming it.

:func:`parse_where` returns a :class:`Where`; :meth:`Where.mask` evaluates it over many
tracks' labels at once (vectorised with numpy) → a boolean mask.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from messai.errors import ConfigError

__all__ = ["Where", "limit_per_label", "parse_where"]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
      | (?P<str>'(?:[^']|'')*'|"(?:[^"]|"")*")
      | (?P<quoted>`[^`]+`)
      | (?P<op><=|>=|<>|!=|==|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][\w.\-]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "NOT", "IN"}
#: how deep parentheses and NOTs may nest (parsing and evaluating recurse once per level)
MAX_DEPTH = 64
_OPS = {"=": "eq", "==": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}


@dataclass(frozen=True)
class _Token:
    kind: str  # num, str, col, op, punct, kw, end
    text: str
    value: Any
    at: int


def _tokenise(text: str) -> list[_Token]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            start = len(text) - len(text[pos:].lstrip())
            raise ConfigError(f"--where: unexpected {text[start : start + 12]!r} at {start + 1}")
        kind = m.lastgroup
        raw = m.group(kind)
        at = m.start(kind) + 1
        if kind == "num":
            out.append(_Token("num", raw, float(raw), at))
        elif kind == "str":
            quote = raw[0]
            out.append(_Token("str", raw, raw[1:-1].replace(quote * 2, quote), at))
        elif kind == "quoted":
            out.append(_Token("col", raw, raw[1:-1], at))
        elif kind == "word" and raw.upper() in _KEYWORDS:
            out.append(_Token("kw", raw, raw.upper(), at))
        elif kind == "word":
            out.append(_Token("col", raw, raw, at))
        else:
            out.append(_Token(kind, raw, raw, at))
        pos = m.end()
    out.append(_Token("end", "end of filter", None, len(text) + 1))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenise(text)
        self.i = 0
        self.depth = 0

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConfigError(
                f"--where: nested more than {MAX_DEPTH} levels deep (parentheses and NOTs) "
                f"at {self.peek().at}; write the filter flatter"
            )

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, expected: str) -> ConfigError:
        t = self.peek()
        return ConfigError(f"--where: expected {expected} at {t.at}, found {t.text!r}")

    def parse(self) -> tuple:
        node = self.or_()
        if self.peek().kind != "end":
            raise self.fail("AND, OR or the end")
        return node

    def or_(self) -> tuple:
        parts = [self.and_()]
        while self.peek().kind == "kw" and self.peek().value == "OR":
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else ("or", parts)

    def and_(self) -> tuple:
        parts = [self.not_()]
        while self.peek().kind == "kw" and self.peek().value == "AND":
            self.take()
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else ("and", parts)

    def not_(self) -> tuple:
        if self.peek().kind == "kw" and self.peek().value == "NOT":
            self.take()
            self.deeper()
            node = ("not", self.not_())
            self.depth -= 1
            return node
        return self.atom()

    def atom(self) -> tuple:
        t = self.peek()
        if t.kind == "punct" and t.value == "(":
            self.take()
            self.deeper()
            node = self.or_()
            if self.take().value != ")":
                self.i -= 1
                raise self.fail("')'")
            self.depth -= 1
            return node
        if t.kind != "col":
            raise self.fail("a label name or '('")
        column = self.take().value
        t = self.peek()
        negate = False
        if t.kind == "kw" and t.value == "NOT":
            self.take()
            negate = True
            t = self.peek()
            if not (t.kind == "kw" and t.value == "IN"):
                raise self.fail("IN after NOT")
        if t.kind == "kw" and t.value == "IN":
            self.take()
            if self.take().value != "(":
                self.i -= 1
                raise self.fail("'(' after IN")
            values = [self.value()]
            while self.peek().kind == "punct" and self.peek().value == ",":
                self.take()
                values.append(self.value())
            if self.take().value != ")":
                self.i -= 1
                raise self.fail("',' or ')'")
            node = ("in", column, values)
            return ("not", node) if negate else node
        if t.kind != "op":
            raise self.fail(f"a comparison (=, !=, <, <=, >, >=, IN) after {column!r}")
        op = _OPS[self.take().value]
        return ("cmp", column, op, self.value())

    def value(self) -> Any:
        t = self.take()
        if t.kind not in ("num", "str"):
            self.i -= 1
            raise self.fail("a 'text' or a number")
        return t.value


def _columns(node: tuple) -> set[str]:
    if node[0] in ("and", "or"):
        return set().union(*(_columns(n) for n in node[1]))
    if node[0] == "not":
        return _columns(node[1])
    return {node[1]}


class Where:
    """A parsed ``--where`` filter.

    Attributes
    ----------
    text : str
        The filter as given.
    columns : frozenset of str
        The label names it reads.
    """

    def __init__(self, text: str, tree: tuple) -> None:
        self.text = text
        self._tree = tree
        self.columns = frozenset(_columns(tree))

    def __repr__(self) -> str:
        return f"Where({self.text!r})"

    def check_columns(self, known: Iterable[str]) -> None:
        """ConfigError naming the first column that is not among ``known`` labels."""
        known = set(known)
        for column in sorted(self.columns):
            if column not in known:
                have = ", ".join(sorted(known)) or "none"
                raise ConfigError(f"--where: unknown column {column!r} (labels here: {have})")

    def matches(self, labels: Mapping[str, Any]) -> bool:
        """Whether one track's labels match."""
        return bool(self.mask([labels])[0])

    def mask(self, labels: Sequence[Mapping[str, Any] | None]) -> np.ndarray:
        """[n] bool: which of n tracks' labels match (None counts as no labels)."""
        columns = {c: _column(labels, c) for c in self.columns}
        return _evaluate(self._tree, columns, len(labels))


def _column(labels: Sequence[Mapping[str, Any] | None], name: str) -> tuple[np.ndarray, ...]:
    """(text [n] object (None where missing), numbers [n] float (NaN where not a number))."""
    text = np.array([None if d is None else d.get(name) for d in labels], dtype=object)
    numbers = np.full(len(labels), np.nan)
    for i, v in enumerate(text):
        if v is not None:
            text[i] = v = str(v)
            try:
                numbers[i] = float(v)
            except ValueError:
                pass
    return text, numbers


def _compare(values: np.ndarray, op: str, value: Any, present: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=bool)
    idx = np.flatnonzero(present)
    if not len(idx):
        return out
    sub = values[idx]
    result = {
        "eq": lambda: sub == value,
        "ne": lambda: sub != value,
        "lt": lambda: sub < value,
        "le": lambda: sub <= value,
        "gt": lambda: sub > value,
        "ge": lambda: sub >= value,
    }[op]()
    out[idx] = np.asarray(result, dtype=bool)
    return out


def _evaluate(node: tuple, columns: dict[str, tuple[np.ndarray, ...]], n: int) -> np.ndarray:
    kind = node[0]
    if kind == "and":
        out = np.ones(n, dtype=bool)
        for part in node[1]:
            out &= _evaluate(part, columns, n)
        return out
    if kind == "or":
        out = np.zeros(n, dtype=bool)
        for part in node[1]:
            out |= _evaluate(part, columns, n)
        return out
    if kind == "not":
        return ~_evaluate(node[1], columns, n)
    text, numbers = columns[node[1]]
    if kind == "in":
        out = np.zeros(n, dtype=bool)
        for value in node[2]:
            out |= _atom(text, numbers, "eq", value)
        return out
    return _atom(text, numbers, node[2], node[3])


def _atom(text: np.ndarray, numbers: np.ndarray, op: str, value: Any) -> np.ndarray:
    if isinstance(value, float):
        return _compare(numbers, op, value, ~np.isnan(numbers))
    present = np.array([v is not None for v in text], dtype=bool)
    return _compare(text, op, value, present)


def parse_where(text: str) -> Where:
    """Parse a ``--where`` filter; ConfigError (one line, naming the place) on a syntax error."""
    if not text or not text.strip():
        raise ConfigError("--where: empty filter")
    return Where(text, _Parser(text).parse())


def limit_per_label(labels: Sequence[Mapping[str, Any] | None], label: str, n: int) -> list[int]:
    """Indices of ranked results keeping at most ``n`` per value of ``label`` (``--max-per``),
    in rank order; results without the label are each their own group."""
    if n < 1:
        raise ConfigError(f"--max-per needs N of at least 1, got {n}")
    counts: dict[str, int] = {}
    keep = []
    for i, d in enumerate(labels):
        value = None if d is None else d.get(label)
        if value is None:
            keep.append(i)
            continue
        value = str(value)
        if counts.get(value, 0) < n:
            counts[value] = counts.get(value, 0) + 1
            keep.append(i)
    return keep
