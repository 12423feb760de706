"""JSON log lines (mailserver/log.py): what an admin or a log shipper reads."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger

from mailserver.log import JSONLinesObserver


def _lines(emit) -> list[dict]:
    stream = io.StringIO()
    emit(Logger(namespace="mailserver.test", observer=JSONLinesObserver(stream)))
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_the_fields_the_level_and_the_formatted_text():
    [line] = _lines(lambda log: log.info("saved mail to {user} uid {uid}", user="alice", uid=7,
                                         session="s1", peer="127.0.0.1:2525"))
    assert line["text"] == "saved mail to alice uid 7"
    assert line["log_level"] == "info" and line["log_namespace"] == "mailserver.test"
    assert (line["user"], line["uid"], line["session"]) == ("alice", 7, "s1")
    assert line["log_format"] == "saved mail to {user} uid {uid}" and line["log_time"] > 0
    assert "log_logger" not in line and "log_flattened" not in line


def test_a_failure_carries_its_traceback_and_odd_values_their_str():
    class Thing:
        def __str__(self):
            return "a thing"

    def emit(log):
        try:
            {}["missing"]
        except KeyError:
            log.failure("lookup of {what} failed", what=Thing(), raw=b"\x00")

    [line] = _lines(emit)
    assert line["log_level"] == "critical"
    assert line["text"] == "lookup of a thing failed" and line["what"] == "a thing"
    assert line["raw"] == "b'\\x00'"
    assert "KeyError" in line["traceback"] and "missing" in line["traceback"]
