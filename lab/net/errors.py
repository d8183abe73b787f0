"""Errors of the lab network-namespace topology."""

from __future__ import annotations


class NetnsError(RuntimeError):
    """Base of the errors raised by :mod:`lab.net`."""


class TopologyError(NetnsError):
    """A topology was asked for something invalid (bad name, address plan exhausted, closed)."""


class CommandError(NetnsError):
    """A command run in a namespace failed or timed out."""

    def __init__(self, argv: list[str], message: str, *, returncode: int | None = None, output: str = "") -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        super().__init__(f"{' '.join(argv)}: {message}" + (f"\n{output.strip()}" if output.strip() else ""))
