"""Logging setup: twisted.logger to stderr, text on a terminal, JSON lines otherwise.

Events carry structured fields (``session``, ``user``, ``peer``...); passwords are never logged.
"""

from __future__ import annotations

import json
import sys

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, formatEvent,
                            globalLogBeginner, textFileLogObserver)

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
# Twisted's own keys copied into a JSON line; its other log_* keys (the logger object, the
# flattened format fields) mean nothing to a reader of the log.
_KEPT_TWISTED_KEYS = ("log_format", "log_namespace", "log_time")


def event_as_json(event: dict) -> str:
    """One log event as a JSON object: its fields, ``log_level`` (a name), ``text`` (the
    formatted message) and, for a failure, ``traceback``.  A value JSON cannot hold is written
    as its ``str``.  Twisted's own ``eventAsJSON`` keeps objects for reloading events and costs
    several times this on every delivery."""
    out = {k: v for k, v in event.items() if not k.startswith("log_")}
    for k in _KEPT_TWISTED_KEYS:
        if k in event:
            out[k] = event[k]
    level = event.get("log_level")
    out["log_level"] = level.name if level is not None else None
    out["text"] = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:           # a log line must never take the process down
            out["traceback"] = repr(failure)
    return json.dumps(out, default=str)


class JSONLinesObserver:
    """Writes each event as one line of JSON to a text stream."""

    def __init__(self, stream):
        self._stream = stream

    def __call__(self, event: dict) -> None:
        self._stream.write(event_as_json(event) + "\n")
        self._stream.flush()


def setup(log_format: str = "auto", level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    if log_format == "json":
        observer = JSONLinesObserver(stream)
    else:
        observer = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False, discardBuffer=True)
