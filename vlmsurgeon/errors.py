"""Error types: each carries what went wrong, why, and what to try, plus its exit code. Also which
settings the running command offers, so that hints from shared code name only options that exist."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token


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


# The running command's settings, each with how its user sets it ("pass --trust-remote-code",
# or a key of the command's file). None outside the CLI: library callers get the flag's name.
_SETTINGS: ContextVar[Mapping[str, str] | None] = ContextVar("vlmsurgeon_settings", default=None)


def offer_settings(settings: Mapping[str, str]) -> Token:
    """Called by the CLI as a command starts: `{"trust_remote_code": "pass --trust-remote-code"}`."""
    return _SETTINGS.set(dict(settings))


def withdraw_settings(token: Token) -> None:
    _SETTINGS.reset(token)


def how_to_set(setting: str, flag: str) -> str | None:
    """How the user of the running command sets `setting` ("pass --trust-remote-code"); None when
    that command has no such setting, so a hint can offer something else instead."""
    offered = _SETTINGS.get()
    if offered is None:
        return f"pass {flag}"
    return offered.get(setting)
