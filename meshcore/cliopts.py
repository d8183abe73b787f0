"""Command-line conventions shared by the project's commands (``clustermesh``,
``clustermesh-apiserver``, ``clustermesh-agent``)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from meshcore.errors import MeshError
from meshcore.log import get_logger

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


def run_until_signalled(run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a daemon's ``run()`` until it ends or SIGTERM/SIGINT arrives (then cancel it: a
    graceful stop). A :class:`MeshError` becomes ``Error: ...`` on stderr and exit status 1."""
    log = get_logger(__name__)

    async def supervise() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(run())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("stopped by signal")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(supervise())
    except MeshError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)
