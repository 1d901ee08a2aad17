"""tosca-parser, run as untrusted work: in a child process that a time and a memory limit end.

A developer's template is parsed by tosca-parser after our own checks; tosca-parser has inputs it
never finishes on (a type deriving from itself through another sends it into an endless loop)
and keeps its errors in a process-wide collector. So each validation runs in a fresh child
(``python -I -m deployer.tosca_parser``): the template goes in on stdin (pickled by us, the
trusted side), the report comes back as JSON (never unpickled from the child), and the child
gets an address-space limit and a CPU limit of its own, plus a wall-clock timeout from the
parent. Nothing is shared between validations, so no lock is needed either.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
import resource
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

TIMEOUT_SECONDS = 20.0
MEMORY_BYTES = 1024 * 1024 * 1024


class ParserStalled(Exception):
    """The parser did not finish within its limits."""


def report(data: dict[str, Any], params: Mapping[str, Any], *, timeout: float = TIMEOUT_SECONDS,
           memory: int = MEMORY_BYTES) -> list[str]:
    """tosca-parser's error lines for ``data`` with ``params`` (empty when it accepts it).

    :raises ParserStalled: the child ran past ``timeout`` seconds or ``memory`` bytes.
    """
    request = pickle.dumps({"data": data, "params": dict(params), "memory": memory, "cpu": int(timeout) + 1})
    try:
        done = subprocess.run([sys.executable, "-I", "-m", "deployer.tosca_parser"], input=request,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ParserStalled(f"tosca-parser did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise ParserStalled(f"tosca-parser stopped (exit {done.returncode}): it ran out of its "
                            f"{memory // (1024 * 1024)} MiB of memory or {timeout:.0f} s of CPU time")
    lines = json.loads(done.stdout)
    return [str(line) for line in lines]


def _parse(data: dict[str, Any], params: dict[str, Any]) -> list[str]:
    from toscaparser.common.exception import ExceptionCollector, ValidationError
    from toscaparser.tosca_template import ToscaTemplate

    logger = logging.getLogger("tosca")  # tosca-parser logs and prints its errors itself
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            ToscaTemplate(yaml_dict_tpl=data, parsed_params=params)
            return []
        except ValidationError:
            lines = [line for line in ExceptionCollector.getExceptionsReport(full=False) if line.strip()]
            return lines or ["the template failed tosca-parser's validation"]
        except Exception as exc:  # tosca-parser crashes on several bad inputs (see libraries notes)
            report = ExceptionCollector.getExceptionsReport(full=False) if ExceptionCollector.exceptions else []
            return [line for line in report if line.strip()] or [f"{type(exc).__name__}: {exc}"]


def main() -> None:
    request = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - written by our own parent
    resource.setrlimit(resource.RLIMIT_AS, (request["memory"], request["memory"]))
    resource.setrlimit(resource.RLIMIT_CPU, (request["cpu"], request["cpu"]))
    sys.stdout.write(json.dumps(_parse(request["data"], request["params"])))


if __name__ == "__main__":
    main()
