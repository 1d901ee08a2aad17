"""Errors of the deployer, rooted at :class:`DeployerError`.

Each subclass carries the context a person needs to act: the template file and YAML line, the
node or type and field for template problems; the node, interface and operation, the failing
Ansible task and its message for operation failures. Secrets never appear in any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcwaas.errors import HpcwaasError


class DeployerError(HpcwaasError):
    """Root of every error the deployer raises on purpose."""

    code = "deployer_error"


@dataclass(frozen=True)
class Issue:
    """One problem found in a service template."""

    message: str
    file: str | None = None
    line: int | None = None
    node: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file or "<template>"
        if self.line is not None:
            where += f":{self.line}"
        subject = []
        if self.node:
            subject.append(self.node)
        if self.field:
            subject.append(self.field)
        return f"{where}: {'.'.join(subject) + ': ' if subject else ''}{self.message}"


class TemplateError(DeployerError):
    """The service template (or its CSAR or folder) is invalid.

    ``issues`` lists every problem found; ``str()`` shows the first one, which is what a person
    fixes first (the later ones are often consequences).
    """

    code = "invalid_template"

    def __init__(self, issues: list[Issue] | Issue, *, hint: str | None = None) -> None:
        self.issues = [issues] if isinstance(issues, Issue) else list(issues)
        first = self.issues[0]
        super().__init__(str(first), hint=hint, file=first.file, line=first.line, node=first.node, field=first.field)
        self.file = first.file
        self.line = first.line
        self.node = first.node
        self.field = first.field


class PackageError(TemplateError):
    """A CSAR or folder cannot be opened safely (path escape, size limits, bad zip)."""

    code = "invalid_package"


class InputError(DeployerError):
    """An input value is missing or does not match its declaration."""

    code = "invalid_input"

    def __init__(self, message: str, *, name: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, input=name)
        self.name = name


class FunctionError(DeployerError):
    """A TOSCA function could not be evaluated (unknown node, property, attribute, ...)."""

    code = "function_error"

    def __init__(self, message: str, *, node: str | None = None, field: str | None = None, **ctx: Any) -> None:
        super().__init__(message, node=node, field=field, **ctx)
        self.node = node
        self.field = field


class OperationError(DeployerError):
    """An operation failed on a node (like xOpera's OperationError, with the failing task)."""

    code = "operation_failed"

    def __init__(
        self,
        message: str,
        *,
        node: str,
        interface: str,
        operation: str,
        task: str | None = None,
        stderr: str | None = None,
        hint: str | None = None,
        **ctx: Any,
    ) -> None:
        text = f"{node}: {interface}.{operation} failed"
        if task:
            text += f" at task {task!r}"
        text += f": {message}"
        super().__init__(text, hint=hint, node=node, interface=interface, operation=operation, task=task, **ctx)
        self.node = node
        self.interface = interface
        self.operation = operation
        self.task = task
        self.stderr = stderr
        self.reason = message


class AggregatedOperationError(DeployerError):
    """Several operations failed in the same run (parallel branches)."""

    code = "operations_failed"

    def __init__(self, errors: list[DeployerError]) -> None:
        self.errors = errors
        lines = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} operations failed: {lines}{more}")


class StateError(DeployerError):
    """The persisted state cannot be read or does not match the request."""

    code = "state_error"


class CredentialError(DeployerError):
    """An SSH credential reference cannot be resolved."""

    code = "credential_error"


class UnsupportedImplementation(DeployerError):
    """No executor is registered for an operation's implementation type."""

    code = "unsupported_implementation"
