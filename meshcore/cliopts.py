"""Command-line conventions shared by the project's commands (``clustermesh``,
``clustermesh-apiserver``, ``clustermesh-agent``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
LOG_LEVELS = ["debug", "info", "warning", "error"]


def log_options(default: str = "info") -> Callable[[F], F]:
    """Add ``--log-level`` and ``--log-json``; the command receives ``log_level`` and ``log_json``."""

    def decorate(func: F) -> F:
        func = click.option("--log-json", is_flag=True, help="Print log events as JSON lines.")(func)
        return click.option(
            "--log-level",
            type=click.Choice(LOG_LEVELS),
            default=default,
            show_default=True,
            help="Least severe log events to print (to stderr).",
        )(func)

    return decorate
