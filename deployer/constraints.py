"""TOSCA 1.3 constraint clauses on input values (section 3.6.3): checked, not just declared.

A clause is a one-key map, e.g. ``{in_range: [1, 10000]}`` or ``{valid_values: [a, b]}``. The
deployer checks the clauses' shape when a template is validated (``clause_problem``) and every
given value against them before anything runs (``violation``): the gateway refuses an invocation
with a 422 naming the input, the CLI before it deploys.

A ``pattern`` is matched with RE2, not Python's ``re``: the developer writes the pattern and any
scientist the value, and a backtracking engine lets a pattern like ``(a+)+$`` spin for minutes on
a short value while holding the GIL, which froze the whole gateway. RE2 matches in linear time;
the price is no backreferences or lookaround, refused at validation with RE2's own message.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import re2

_COMPARE = {
    "equal": ("equal to", lambda v, b: v == b),
    "greater_than": ("greater than", lambda v, b: v > b),
    "greater_or_equal": ("at least", lambda v, b: v >= b),
    "less_than": ("less than", lambda v, b: v < b),
    "less_or_equal": ("at most", lambda v, b: v <= b),
}
_LENGTH = {"length": "exactly", "min_length": "at least", "max_length": "at most"}
OPERATORS = frozenset({*_COMPARE, *_LENGTH, "in_range", "valid_values", "pattern"})
UNBOUNDED = "UNBOUNDED"


def clause_problem(clause: Any) -> str | None:
    """What is wrong with a clause's shape, or None when it is a clause we check."""
    if not isinstance(clause, dict) or len(clause) != 1:
        return "a constraint is a map with one operator, e.g. {greater_or_equal: 1}"
    (op, arg), = clause.items()
    if op not in OPERATORS:
        return f"unknown constraint {op!r}; known: {', '.join(sorted(OPERATORS))}"
    if op == "in_range" and not (isinstance(arg, list) and len(arg) == 2):
        return "in_range takes a list of two bounds, e.g. [1, 100]"
    if op == "valid_values" and not (isinstance(arg, list) and arg):
        return "valid_values takes a non-empty list"
    if op in _LENGTH and not (isinstance(arg, int) and not isinstance(arg, bool) and arg >= 0):
        return f"{op} takes a whole number"
    if op == "pattern":
        if not isinstance(arg, str):
            return "pattern takes a regular expression as a string"
        try:
            _compiled(arg)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            return f"pattern is not a valid regular expression (RE2 syntax): {reason}"
    return None


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is reported to the developer, not logged to stderr


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, _OPTIONS)


def violation(clauses: Sequence[Any], value: Any) -> str | None:
    """How ``value`` breaks the first clause it breaks (a phrase: "must be at least 1"), or None.

    Clauses with a bad shape were refused at validation; here they are skipped. A value whose type
    cannot be compared with a bound (a string against a number) breaks the clause."""
    for clause in clauses:
        if clause_problem(clause) is not None:
            continue
        (op, arg), = clause.items()
        try:
            if op in _COMPARE:
                words, test = _COMPARE[op]
                if not test(value, arg):
                    return f"must be {words} {arg!r}"
            elif op == "in_range":
                low, high = arg  # TOSCA writes an open upper end as UNBOUNDED
                if not (low <= value and (high == UNBOUNDED or value <= high)):
                    return f"must be at least {low!r}" if high == UNBOUNDED else f"must be between {low!r} and {high!r}"
            elif op == "valid_values":
                if value not in arg:
                    return f"must be one of {', '.join(repr(v) for v in arg)}"
            elif op in _LENGTH:
                size = len(value)
                if (op == "length" and size != arg) or (op == "min_length" and size < arg) \
                        or (op == "max_length" and size > arg):
                    return f"must have {_LENGTH[op]} {arg} {'characters' if isinstance(value, str) else 'items'}"
            elif op == "pattern":
                if not isinstance(value, str) or _compiled(arg).fullmatch(value) is None:
                    return f"must match the pattern {arg!r}"
        except TypeError:
            return f"cannot be compared with {op} {arg!r}"
    return None
