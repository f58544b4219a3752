"""One error tree whose messages are what the user sees.

Each subclass builds its message from its arguments and says how to fix the problem, so that the
CLI (and the TUI) can print ``str(err)`` and exit with ``err.exit_code`` without knowing the cause.
Raise them ``from`` the underlying exception so that ``--debug`` can still show the traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class ApplianceError(Exception):
    """Base of every error the user is meant to read."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file: where it is, what is wrong, and a hint."""

    path: str
    message: str
    line: int | None = None
    hint: str | None = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        text = f"{where}: {self.path or '<root>'}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class InvalidInputError(ApplianceError):
    """An input file (answers, stack, pipeline) has one or more problems, all listed."""

    exit_code = 2

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        count = len(problems)
        lines = "\n".join(f"  - {p.render(source)}" for p in problems)
        super().__init__(
            f"{source} has {count} problem{'s' if count != 1 else ''}:\n{lines}",
            fix=f"edit {source} and run the command again",
        )


class PreflightError(ApplianceError):
    """A blocking preflight check failed: the host cannot run the chosen stack as it is."""

    exit_code = 3

    def __init__(self, failures: list[tuple[str, str, str]]) -> None:
        self.failures = failures
        lines = "\n".join(f"  - {name}: {detail}\n      fix: {fix}" for name, detail, fix in failures)
        super().__init__(f"preflight failed:\n{lines}")


class RuntimeUnavailableError(ApplianceError):
    """The chosen runtime (supervisord, podman, docker) cannot be reached or started."""

    exit_code = 4


class ServiceUnhealthyError(ApplianceError):
    """A service did not pass its health check in time."""

    exit_code = 5

    def __init__(self, service: str, detail: str, log_file: str | None, log_tail: str = "") -> None:
        self.service = service
        tail = f"\n  last log lines:\n{log_tail}" if log_tail else ""
        where = f"appliance logs {service}" + (f" (or {log_file})" if log_file else "")
        super().__init__(
            f"service {service!r} did not become healthy: {detail}{tail}",
            fix=f"read {where}, correct the cause, then run `appliance up` again",
        )


class ServiceNotFoundError(ApplianceError):
    """A command named a service that the stack does not have."""

    exit_code = 2

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"no service named {name!r} in this stack",
            fix=f"use one of: {', '.join(sorted(known)) or '(none)'}",
        )


class CancelledError(ApplianceError):
    """The user cancelled an apply; what is done stays done and the next ``up`` finishes the rest."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("cancelled", fix="run `appliance up` again to finish")
