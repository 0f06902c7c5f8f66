"""The failures of step 1 worth one clear line, and how they are written to ``errors.log``."""

from __future__ import annotations

import traceback

from ..console import log

CONNECT_ERRORS = (
    "ERR_CONNECTION_REFUSED",
    "ERR_NAME_NOT_RESOLVED",
    "ERR_NAME_RESOLUTION_FAILED",
    "ERR_PROXY_CONNECTION_FAILED",
    "ERR_TUNNEL_CONNECTION_FAILED",
    "ERR_ADDRESS_UNREACHABLE",
    "ERR_CONNECTION_TIMED_OUT",
    "ERR_INTERNET_DISCONNECTED",
    "ERR_CONNECTION_CLOSED",
    "ERR_CONNECTION_RESET",
    "ERR_EMPTY_RESPONSE",
    "ERR_SOCKS_CONNECTION_FAILED",
)


class CaptchaHit(Exception):
    """Yandex answered with a captcha."""


class StageError(Exception):
    """A step of the flow failed in a way worth one clear line."""


class TooLarge(Exception):
    """The upload answered 413: the photo is re-encoded and uploaded again."""


class Stopped(Exception):
    """The run stopped (captchas, no connection) before this query started."""


def log_failure(name: str, stage: str, exc: BaseException | str) -> None:
    """One block in ``errors.log``, as the original: file, stage, type, message, traceback."""
    if isinstance(exc, BaseException):
        kind, message = type(exc).__name__, str(exc)
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        kind, message, trace = "Error", exc, ""
    log.error(
        "\nFile: %s\nStage: %s\nType: %s\nMessage: %s\nTraceback:\n%s%s",
        name,
        stage,
        kind,
        message,
        trace or "(none)\n",
        "-" * 60,
    )


def is_connect_error(exc: BaseException) -> bool:
    text = str(exc)
    return any(code in text for code in CONNECT_ERRORS)
