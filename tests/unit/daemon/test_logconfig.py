"""Log output formats."""

from __future__ import annotations

import io
import json
import logging

import pytest

from cimsnap.daemon.logconfig import configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_level_message_extra_and_traceback() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    log = logging.getLogger("cimsnap.test")
    log.debug("hello %s", "world", extra={"rpc": "Stat"})
    try:
        raise ValueError("bad")
    except ValueError:
        log.error("failed", exc_info=True)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "debug" and first["msg"] == "hello world"
    assert first["rpc"] == "Stat" and first["logger"] == "cimsnap.test"
    assert second["error"] == "bad" and "ValueError" in second["traceback"]
    configure_logging("warning", "text", stream)  # replaces, does not add, a handler
    assert len(logging.getLogger().handlers) == 1


def test_level_filters() -> None:
    stream = io.StringIO()
    configure_logging("warning", "text", stream)
    logging.getLogger("cimsnap.test").info("quiet")
    logging.getLogger("cimsnap.test").warning("loud")
    assert "quiet" not in stream.getvalue() and "loud" in stream.getvalue()
