"""The machinery of a tour: run commands as a user would (shown, their output streamed), keep each
step's result and time, and render the summary. Nothing here knows what the steps do.

Every command is a subprocess with a deadline; a step that raises :class:`StepFailed` (or any
error) is recorded as failed and the steps after it are skipped; :meth:`TourRunner.finally_step`
runs whatever happened before it (the lab's teardown), with Ctrl-C ignored while it runs.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["CommandResult", "StepFailed", "StepResult", "TourInterrupted", "TourRunner", "render_summary",
           "sigterm_as_interrupt"]

PROJECT: Final = Path(__file__).resolve().parents[2]
CLI: Final = (sys.executable, "-m", "clustermesh_cli.main")
Outcome = Literal["ok", "FAILED", "skipped", "interrupted"]


class StepFailed(Exception):
    """A step did not show what it should; the message says what was seen instead."""


class TourInterrupted(BaseException):
    """Ctrl-C or SIGTERM: stop the steps, still tear down."""


@dataclass(frozen=True)
class CommandResult:
    """A finished command: its exit status and its output (stdout and stderr, interleaved)."""

    shown: str
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class StepResult:
    """One row of the summary."""

    number: int
    title: str
    outcome: Outcome
    seconds: float
    detail: str = ""


def render_summary(results: Sequence[StepResult], *, title: str) -> Table:
    """The summary table (pure)."""
    table = Table(title=title, title_justify="left")
    for column, justify in (("#", "right"), ("step", "left"), ("result", "left"), ("time", "right"),
                            ("what it showed", "left")):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in results:
        style = {"ok": "green", "FAILED": "red", "interrupted": "red"}.get(r.outcome, "dim")
        table.add_row(str(r.number), r.title, f"[{style}]{r.outcome}[/{style}]",
                      f"{r.seconds:.1f}s" if r.outcome != "skipped" else "", escape(r.detail))
    return table


def _console() -> Console:
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(width=160, highlight=False, soft_wrap=False)  # logs and CI: rows on one line


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`TourInterrupted` (as Ctrl-C raises KeyboardInterrupt)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise TourInterrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class TourRunner:
    """Runs the steps in order and remembers their results.

    ``env`` is added to the environment of every command (e.g. ``KUBECONFIG``)."""

    env: Mapping[str, str] = field(default_factory=dict)
    console: Console = field(default_factory=_console)
    results: list[StepResult] = field(default_factory=list)
    failed: bool = False
    interrupted: bool = False
    _number: int = 0

    # ---- commands ----

    def run(self, argv: Sequence[str], *, shown: Sequence[str] | None = None, timeout: float = 60.0,
            stdin: str | None = None, quiet: bool = False, new_session: bool = False) -> CommandResult:
        """Run ``argv`` (shown to the user as ``shown``), streaming its output unless ``quiet``.
        Raises :class:`StepFailed` when it does not finish within ``timeout`` seconds."""
        text = shlex.join(shown or argv)
        self.console.print(f"[bold]$ {escape(text)}[/bold]", soft_wrap=True)
        env = {**os.environ, **self.env}
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=PROJECT, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                start_new_session=new_session)
        lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if not quiet:
                    self.console.out(f"    {line.rstrip()}", highlight=False)

        reader = threading.Thread(target=pump, name="tour-output", daemon=True)
        reader.start()
        try:
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                proc.stdin.close()
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(5)
            raise StepFailed(f"`{text}` did not finish within {timeout:g}s") from None
        finally:
            if proc.poll() is None:  # interrupted while waiting
                proc.kill()
                proc.wait()
        reader.join(5)
        return CommandResult(text, returncode, "".join(lines))

    def clustermesh(self, *args: str, **kw: object) -> CommandResult:
        """``clustermesh ARGS`` (this project's CLI, run with this interpreter)."""
        return self.run([*CLI, *args], shown=["clustermesh", *args], **kw)  # type: ignore[arg-type]

    def kubectl(self, *args: str, **kw: object) -> CommandResult:
        return self.run(["kubectl", *args], **kw)  # type: ignore[arg-type]

    def check(self, result: CommandResult, what: str) -> CommandResult:
        """``result`` if it succeeded, else :class:`StepFailed` with its last output lines."""
        if not result.ok:
            tail = "\n".join(result.output.strip().splitlines()[-6:])
            raise StepFailed(f"{what}: `{result.shown}` exited {result.returncode}" + (f": {tail}" if tail else ""))
        return result

    def say(self, line: str) -> None:
        self.console.print(f"  {escape(line)}", soft_wrap=True)

    # ---- steps ----

    def step(self, title: str, body: Callable[[], str]) -> bool:
        """Run one step (``body`` returns what it showed, for the summary) unless an earlier one
        failed or the tour was interrupted (then it is recorded as skipped). True if it passed."""
        self._number += 1
        if self.failed or self.interrupted:
            self.results.append(StepResult(self._number, title, "skipped", 0.0))
            return False
        self.console.rule(f"[bold]step {self._number}: {escape(title)}", align="left")
        t0 = time.monotonic()
        outcome: Outcome = "ok"
        detail = ""
        try:
            detail = body()
        except (KeyboardInterrupt, TourInterrupted):
            outcome, detail = "interrupted", "interrupted (Ctrl-C or SIGTERM)"
            self.interrupted = True
        except StepFailed as err:
            outcome, detail = "FAILED", str(err)
        except Exception as err:  # a step's own bug or an unexpected answer: still a failed step
            outcome, detail = "FAILED", f"{type(err).__name__}: {err}"
        seconds = time.monotonic() - t0
        if outcome != "ok":
            self.failed = True
            self.console.print(f"[red]  step {self._number} {outcome}: {escape(detail)}[/red]", soft_wrap=True)
        else:
            self.console.print(f"[green]  ok[/green] ({seconds:.1f}s): {escape(detail)}", soft_wrap=True)
        self.results.append(StepResult(self._number, title, outcome, seconds, detail.splitlines()[0] if detail else ""))
        return outcome == "ok"

    def finally_step(self, title: str, body: Callable[[], str]) -> bool:
        """A step that runs whatever happened before (teardown), with SIGINT ignored meanwhile (its
        commands should run with ``new_session=True`` so that a terminal's Ctrl-C misses them too)."""
        failed, interrupted = self.failed, self.interrupted
        self.failed = self.interrupted = False
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            passed = self.step(title, body)
        finally:
            signal.signal(signal.SIGINT, previous)
        self.failed = self.failed or failed
        self.interrupted = self.interrupted or interrupted
        return passed

    def summary(self, title: str) -> None:
        self.console.print()
        self.console.print(render_summary(self.results, title=title))
        passed = sum(1 for r in self.results if r.outcome == "ok")
        total = sum(r.seconds for r in self.results)
        verdict = "passed" if passed == len(self.results) else "FAILED"
        self.console.print(f"tour {verdict}: {passed}/{len(self.results)} steps ok in {total:.0f}s")
