"""Logging setup: twisted.logger to stderr, text on a terminal, JSON lines otherwise.

Events carry structured fields (``session``, ``user``, ``peer``...); passwords are never logged.
"""

from __future__ import annotations

import sys

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            globalLogBeginner, jsonFileLogObserver, textFileLogObserver)

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


def setup(log_format: str = "auto", level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    if log_format == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False, discardBuffer=True)
