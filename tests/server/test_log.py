"""The log switch and formats: Triton's settings applied per record, and control characters escaped."""

from __future__ import annotations

import logging
import re

from evserve.server.log import LogSettings, _Switch, _TritonFormatter


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("evserve.test", level, "/x/model.py", 26, message, None, None)


def test_each_level_has_its_switch() -> None:
    switch = _Switch(LogSettings(log_info=False, log_warning=True, log_error=False, log_verbose_level=0))
    assert not switch.filter(record(logging.INFO, "i"))
    assert switch.filter(record(logging.WARNING, "w"))
    assert not switch.filter(record(logging.ERROR, "e"))
    assert not switch.filter(record(logging.DEBUG, "verbose"))
    switch.settings = LogSettings(log_verbose_level=1)
    assert switch.filter(record(logging.DEBUG, "verbose"))


def test_formats_and_escaping() -> None:
    switch = _Switch(LogSettings())
    formatter = _TritonFormatter(switch)
    line = formatter.format(record(logging.WARNING, "header x-id: \x1b[31mred\r\nforged line"))
    assert re.match(r"W\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ model\.py:26\] ", line), line
    assert "\x1b" not in line and "\r" not in line and "\n" not in line
    assert "\\x1b[31mred\\x0d\\x0aforged line" in line
    switch.settings = LogSettings(log_format="ISO8601")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ W \d+ model\.py:26\] ", formatter.format(record(30, "m")))
