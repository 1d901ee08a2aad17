"""TOSCA constraint clauses on inputs: their shapes are checked at validation, values before a run."""

from __future__ import annotations

from typing import Any

import pytest

from deployer.constraints import clause_problem, violation
from deployer.errors import InputError
from deployer.model import InputDef
from deployer.validate import resolve_inputs


@pytest.mark.parametrize(("clauses", "value", "broken"), [
    ([{"in_range": [1, 10]}], 0, "must be between 1 and 10"),
    ([{"in_range": [1, 10]}], 10, None),
    ([{"in_range": [1, "UNBOUNDED"]}], 10**9, None),
    ([{"in_range": [1, "UNBOUNDED"]}], 0, "must be at least 1"),
    ([{"greater_or_equal": 1}], 1, None),
    ([{"greater_than": 1}], 1, "must be greater than 1"),
    ([{"less_than": 5}], 7, "must be less than 5"),
    ([{"less_or_equal": 5}], 5, None),
    ([{"equal": "x"}], "y", "must be equal to 'x'"),
    ([{"valid_values": ["a", "b"]}], "c", "must be one of 'a', 'b'"),
    ([{"length": 3}], "abcd", "must have exactly 3 characters"),
    ([{"min_length": 2}], ["x"], "must have at least 2 items"),
    ([{"max_length": 2}], "abc", "must have at most 2 characters"),
    ([{"pattern": "[a-z]+"}], "abc1", "must match the pattern '[a-z]+'"),  # the whole value must match
    ([{"pattern": "[a-z]+"}], "abc", None),
    ([{"pattern": "[a-zé]+"}], "café", None),
    ([{"greater_than": 1}], "text", "cannot be compared with greater_than 1"),
    ([{"min_length": 1}, {"in_range": [1, 3]}], 9, "cannot be compared with min_length 1"),
])
def test_violations(clauses: list[Any], value: Any, broken: str | None) -> None:
    assert violation(clauses, value) == broken


@pytest.mark.parametrize(("clause", "problem"), [
    ({"shorter": 3}, "unknown constraint 'shorter'"),
    ({"in_range": [1]}, "in_range takes a list of two bounds"),
    ({"valid_values": []}, "valid_values takes a non-empty list"),
    ({"min_length": -1}, "min_length takes a whole number"),
    ({"pattern": "(["}, "pattern is not a valid regular expression (RE2 syntax): missing ]: ["),
    ({"pattern": r"(a)\1"}, "invalid escape sequence: \\1"),  # backreferences: not in RE2
    ({"pattern": "a(?=b)"}, "invalid perl operator: (?="),  # nor lookaround
    ({"equal": 1, "less_than": 2}, "one operator"),
    ("greater_than 1", "one operator"),
])
def test_clause_problems(clause: Any, problem: str) -> None:
    found = clause_problem(clause)
    assert found is not None and problem in found


def test_a_backtracking_pattern_cannot_hold_the_gateway() -> None:
    # Python's re backtracks for ever here (2^n paths, GIL held); RE2 answers in linear time.
    assert violation([{"pattern": "(a+)+$"}], "a" * 100_000 + "!") == "must match the pattern '(a+)+$'"
    assert violation([{"pattern": "(a+)+$"}], "a" * 100_000) is None


def test_resolve_inputs_checks_given_values_after_coercion() -> None:
    decls = {"top": InputDef(name="top", type="integer", default=20, constraints=[{"in_range": [1, 100]}])}
    assert resolve_inputs(decls, {"top": "7"}) == {"top": 7}
    assert resolve_inputs(decls, {}) == {"top": 20}
    with pytest.raises(InputError, match=r"input 'top' must be between 1 and 100, not -3") as err:
        resolve_inputs(decls, {"top": "-3"})
    assert err.value.name == "top"


def test_a_secret_value_is_never_echoed() -> None:
    decls = {"pin": InputDef(name="pin", type="integer", secret=True, constraints=[{"in_range": [1000, 9999]}])}
    with pytest.raises(InputError) as err:
        resolve_inputs(decls, {"pin": "31"})
    assert "31" not in err.value.message and "between 1000 and 9999" in err.value.message
    with pytest.raises(InputError) as err:
        resolve_inputs(decls, {"pin": "s3cr3t-value"})
    assert "s3cr3t-value" not in err.value.message
