"""Logging: JSON lines carry level, logger, timestamp and the bound ids; stdlib is routed too."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from philip.logs import bind_ids, configure_logging, get_logger


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure_logging("json", "debug", stream=buf)
    yield buf
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_philip_handler", False)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_lines_with_bound_ids_restored_after(stream: io.StringIO) -> None:
    log = get_logger("philip.test")
    with bind_ids(request_id="r1", job_id="j1", session_id=None):
        log.info("job.started", steps=4)
        with bind_ids(job_id="j2"):
            log.info("job.nested")
        log.info("job.back")
    log.info("after")
    first, nested, back, after = lines(stream)
    assert first["event"] == "job.started" and first["steps"] == 4
    assert first["level"] == "info" and first["logger"] == "philip.test"
    assert first["request_id"] == "r1" and first["job_id"] == "j1" and "session_id" not in first
    assert first["timestamp"].startswith("20") and "T" in first["timestamp"]
    assert nested["job_id"] == "j2" and nested["request_id"] == "r1"
    assert back["job_id"] == "j1"
    assert "request_id" not in after and "job_id" not in after


def test_stdlib_records_use_the_same_format(stream: io.StringIO) -> None:
    with bind_ids(request_id="r9"):
        logging.getLogger("grpc.foreign").warning("careful %s", "now")
    (record,) = lines(stream)
    assert record == {
        **record,
        "event": "careful now",
        "level": "warning",
        "logger": "grpc.foreign",
        "request_id": "r9",
    }


def test_exceptions_stay_on_one_json_line(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("philip.test").exception("failed")
    (record,) = lines(stream)
    assert "RuntimeError: boom" in record["exception"]


def test_level_filter_and_console(stream: io.StringIO) -> None:
    configure_logging("json", "warning", stream=stream)
    get_logger("x").info("hidden")
    assert lines(stream) == []
    console = io.StringIO()
    configure_logging("console", "info", stream=console)
    get_logger("x").info("shown", k=1)
    assert "shown" in console.getvalue() and "k" in console.getvalue()
    assert stream.getvalue() == ""  # the old handler was replaced, not duplicated
    with pytest.raises(ValueError):
        configure_logging("xml")
