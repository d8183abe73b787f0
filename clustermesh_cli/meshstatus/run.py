"""``clustermesh status --context C``: show the mesh status once, or poll it with ``--wait`` until
it is ready or the wait's deadline passes (then print what blocks it and fail)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from rich.console import Console

from clustermesh_cli.enable.kube import KubeError
from clustermesh_cli.meshstatus.kube import collect
from clustermesh_cli.meshstatus.model import MeshStatus
from clustermesh_cli.meshstatus.render import header_lines, render_table, render_text, summary_line

__all__ = ["EXIT_NOT_READY", "EXIT_READY", "MIN_PROBE_SECONDS", "print_status", "run_status"]

EXIT_READY: Final = 0
EXIT_NOT_READY: Final = 1
#: Each round gives an agent at least this long to answer, even right before the deadline: a
#: short --wait-duration still gets real answers rather than timeouts.
MIN_PROBE_SECONDS: Final = 3.0
_PIPE_WIDTH: Final = 300
Echo = Callable[[str], None]
Collect = Callable[[float], MeshStatus]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def print_status(status: MeshStatus, output: str) -> None:
    """Print ``status`` as ``json``, ``table`` or ``summary`` (text) to stdout."""
    if output == "json":
        print(json.dumps(status.to_json(), indent=2), flush=True)
    elif output == "table":
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else _PIPE_WIDTH
        console = Console(width=width, soft_wrap=False)
        for line in header_lines(status):
            console.print(line, markup=False, highlight=False)
        console.print(render_table(status))
        console.print(summary_line(status), markup=False, highlight=False)
    else:
        print(render_text(status), flush=True)


def run_status(context: str, *, kubeconfig: Path | None = None, namespace: str = "kube-system",
               output: str = "summary", wait: bool = False, wait_duration: float = 300.0, interval: float = 1.0,
               request_timeout: float = 10.0, echo: Echo = _stderr, read: Collect | None = None) -> int:
    """Show the status of ``context``'s mesh; the exit status (0: shown, or with ``wait`` ready).

    ``read(timeout)`` reads one status (default: :func:`~clustermesh_cli.meshstatus.kube.collect`
    with ``timeout`` per agent exec). Errors and progress go to ``echo`` (stderr)."""
    if read is None:
        def read(timeout: float) -> MeshStatus:
            return collect(context, kubeconfig=kubeconfig, namespace=namespace, exec_timeout=timeout)

    if not wait:
        try:
            print_status(read(request_timeout), output)
        except KubeError as err:
            echo(f"Error: {err}")
            return EXIT_NOT_READY
        return EXIT_READY
    start = time.monotonic()
    deadline = start + wait_duration
    status: MeshStatus | None = None
    shown: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        problems: list[str]
        try:
            status = read(min(request_timeout, max(remaining, MIN_PROBE_SECONDS)))
            problems = status.blockers()
        except KubeError as err:
            problems = [str(err)]
        if not problems:
            assert status is not None
            print_status(status, output)
            return EXIT_READY
        now = time.monotonic()
        if now >= deadline:
            if status is not None:
                print_status(status, output)
            detail = "\n".join(f"  - {p}" for p in problems)
            echo(f"Error: the mesh of context {context} is not ready after {wait_duration:g}s; blocking:\n{detail}")
            return EXIT_NOT_READY
        if problems != shown:  # progress only when what blocks changes
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            echo(f"⌛ [{context}] waiting ({now - start:.0f}s): {problems[0]}{more}")
            shown = problems
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
