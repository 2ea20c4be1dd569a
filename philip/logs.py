"""Structured logging for every PHiLIP process.

structlog renders both its own events and stdlib ``logging`` records (grpc, diffusers and
transformers once routed, Python warnings) through one handler, so a pod emits a single, uniform stream: JSON
lines in production, coloured key/values on a developer console.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, TextIO

import structlog

_HANDLER_MARK = "_philip_handler"


def configure_logging(fmt: str = "json", level: str = "info", *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (default stderr) in ``fmt``.

    Safe to call again (e.g. after CLI flags are parsed): the previous PHiLIP handler
    is replaced, while handlers installed by others (pytest's caplog) are left alone.
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be 'json' or 'console', got {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    tail: list[Any]
    if fmt == "json":
        # Tracebacks must be folded into the event, or a JSON line would be split.
        tail = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        tail = [structlog.dev.ConsoleRenderer(colors=_isatty(stream or sys.stderr))]

    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests and the CLI reconfigure after loggers were created.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)  # warnings.warn (peft, torch) become events, not raw lines in a JSON stream


def route_model_library_logs() -> None:
    """diffusers and transformers print through handlers (and progress bars) of their own; send their records
    to the root handler instead, so a server's stream stays one event per line. Call once they are needed."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
        library.disable_progress_bar()


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Logger whose events carry ``logger=name`` and the bound context ids."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


@contextmanager
def bind_ids(**ids: str | None) -> Iterator[None]:
    """Bind ids (request_id, job_id, session_id, ...) to every log line in this context.

    ``None`` values are skipped so callers can pass optional ids unconditionally.
    Previous values are restored on exit, so nested binds compose.
    """
    present = {key: value for key, value in ids.items() if value is not None}
    tokens = structlog.contextvars.bind_contextvars(**present)
    try:
        yield
    finally:
        # An async generator finalised from another context (GC, loop shutdown) cannot
        # reset its tokens; the bound values die with their context anyway.
        with suppress(ValueError):
            structlog.contextvars.reset_contextvars(**tokens)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
