"""Structured logging, configured once per process.

Components take a logger scoped to what they are (``get_logger(__name__, cluster="c2")``) and log
events with fields, never formatted strings. Private material (keys, certificates) is never a field.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


def configure(*, level: str = "info", json: bool = False) -> None:
    """Set up structlog over the standard library; call once from a process entry point."""
    global _configured
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s", force=True)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(name: str, **fields: Any) -> Any:
    """A structured logger named ``name`` with ``fields`` bound to every event."""
    return structlog.get_logger(name).bind(**fields)
