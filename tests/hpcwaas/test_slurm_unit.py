"""Batch job specs: every value that reaches sbatch is validated; the script goes on stdin."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hpcwaas.slurm import JobSpec, JobState


def test_sbatch_args_are_separate_arguments() -> None:
    spec = JobSpec(script="#!/bin/sh\necho $HOME; rm -rf / # harmless: never parsed by our shell\n",
                   name="demo", partition="debug", time_limit="00:05:00", ntasks=2, comment="hpcwaas:d1:s2",
                   chdir="/home/u/w", output="/home/u/w/%x-%j.out")
    args = spec.sbatch_args()
    assert args[0] == "--parsable"
    assert "--partition=debug" in args and "--time=00:05:00" in args and "--ntasks=2" in args
    assert all("rm -rf" not in a for a in args)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "x; touch /tmp/pwned"),
        ("name", "$(id)"),
        ("partition", "debug --uid=0"),
        ("time_limit", "10; id"),
        ("comment", "tag`id`"),
        ("chdir", "/home/u/../../etc"),
        ("output", "/tmp/out $(id)"),
        ("error", "/tmp/a\nb"),
    ],
)
def test_injection_attempts_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as err:
        JobSpec(script="#!/bin/sh\ntrue\n", **{field: value})
    assert field in str(err.value)


def test_script_needs_a_shebang() -> None:
    with pytest.raises(ValidationError, match="#!"):
        JobSpec(script="echo hi")


@pytest.mark.parametrize(
    ("text", "state", "terminal"),
    [
        ("RUNNING", JobState.RUNNING, False),
        ("CANCELLED by 1001", JobState.CANCELLED, True),
        ("COMPLETED", JobState.COMPLETED, True),
        ("FAILED", JobState.FAILED, True),
        ("PENDING", JobState.PENDING, False),
        ("WEIRD", JobState.UNKNOWN, False),
    ],
)
def test_state_parsing(text: str, state: JobState, terminal: bool) -> None:
    assert JobState.parse(text) is state
    assert state.is_terminal is terminal
