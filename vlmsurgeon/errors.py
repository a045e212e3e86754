"""Error types: each carries what went wrong, why, and what to try, plus its exit code."""

from __future__ import annotations


class VlmSurgeonError(Exception):
    """Base error. `main()` prints it as one line and exits with `exit_code`."""

    exit_code = 3

    def __init__(self, what: str, hint: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint

    def line(self) -> str:
        return f"{self.what} (try: {self.hint})" if self.hint else self.what


class BadInput(VlmSurgeonError):
    """Usage errors, unreadable or invalid files, unknown models: exit 2."""

    exit_code = 2


class CheckFailed(VlmSurgeonError):
    """A check ran and failed (budget violated, verify mismatch): exit 1."""

    exit_code = 1


class RuntimeFailure(VlmSurgeonError):
    """Something broke while running: exit 3."""

    exit_code = 3
