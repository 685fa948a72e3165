"""A safe row predicate for partial pulls: ``quality >= 0.8 and label in ("cup", "dog")``.

The expression comes from a command line and is evaluated on metadata rows, so it is
parsed with :mod:`ast` and compiled from a whitelist of nodes (comparisons, ``and`` /
``or`` / ``not``, ``in`` / ``not in`` over a tuple or list of literals, column names and
literals); anything else (calls, attributes, subscripts, arithmetic, lambdas) is refused
before a single row is read, so no text can run code. A comparison with a null column
value is false, as in SQL.
"""
from __future__ import annotations

import ast
import operator
from typing import Any, Callable, Collection, Hashable, Mapping

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]


class WhereError(ValueError):
    """An expression outside the whitelist, or naming a column the rows do not have."""


_COMPARISONS: Mapping[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.In: lambda value, options: isinstance(value, Hashable) and value in options,
    ast.NotIn: lambda value, options: isinstance(value, Hashable) and value not in options,
}
_LITERAL_TYPES = (str, int, float, bool, type(None))


def _literal(node: ast.AST, expression: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, _LITERAL_TYPES):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
        return -node.operand.value
    raise WhereError(f"{type(node).__name__} {ast.unparse(node)!r} is not allowed in {expression!r}: only column "
                     f"names and literals are")


def _operand(node: ast.AST, columns: Collection[str], expression: str) -> Callable[[Row], Any]:
    if isinstance(node, ast.Name):
        if node.id not in columns:
            raise WhereError(f"unknown column {node.id!r} in {expression!r}; columns: {', '.join(sorted(columns))}")
        return lambda row, name=node.id: row[name]
    if isinstance(node, (ast.Tuple, ast.List)):
        options = frozenset(_literal(element, expression) for element in node.elts)
        return lambda row: options
    value = _literal(node, expression)
    return lambda row: value


def _compare(node: ast.Compare, columns: Collection[str], expression: str) -> Predicate:
    operands = [_operand(part, columns, expression) for part in (node.left, *node.comparators)]
    steps = []
    for index, op in enumerate(node.ops):
        if type(op) not in _COMPARISONS:
            raise WhereError(f"operator {type(op).__name__} is not allowed in {expression!r}")
        is_membership = isinstance(op, (ast.In, ast.NotIn))
        if is_membership != isinstance(node.comparators[index], (ast.Tuple, ast.List)):
            raise WhereError(f"'in' and 'not in' need a tuple or list of literals on their right, and only they "
                             f"take one, in {expression!r}")
        steps.append((_COMPARISONS[type(op)], operands[index], operands[index + 1]))

    def compare(row: Row) -> bool:
        for function, left, right in steps:
            a, b = left(row), right(row)
            try:
                if a is None or b is None or not function(a, b):
                    return False
            except TypeError:
                raise WhereError(f"cannot compare {a!r} with {b!r} in {expression!r} (row {row.get('key')!r})") from None
        return True

    return compare


def _compile(node: ast.AST, columns: Collection[str], expression: str) -> Predicate:
    if isinstance(node, ast.BoolOp):
        parts = [_compile(value, columns, expression) for value in node.values]
        combine = all if isinstance(node.op, ast.And) else any
        return lambda row: combine(part(row) for part in parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, columns, expression)
        return lambda row: not inner(row)
    if isinstance(node, ast.Compare):
        return _compare(node, columns, expression)
    if isinstance(node, ast.Name):  # a boolean column on its own
        value = _operand(node, columns, expression)
        return lambda row: value(row) is True
    raise WhereError(f"{type(node).__name__} is not allowed in {expression!r} (only comparisons, and/or/not, "
                     f"in/not in over literals, column names and literals)")


def compile_where(expression: str, columns: Collection[str]) -> Predicate:
    """A predicate over rows with ``columns``; raises :class:`WhereError` on anything outside the whitelist."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as error:
        raise WhereError(f"cannot parse {expression!r}: {error.msg}") from None
    return _compile(tree.body, frozenset(columns), expression)
