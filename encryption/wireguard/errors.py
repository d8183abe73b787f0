"""Errors of the WireGuard layer (all :class:`~meshcore.errors.MeshError`); never carry key material."""

from __future__ import annotations

from meshcore.errors import MeshError


class WireGuardError(MeshError):
    """Root of the errors raised by :mod:`encryption.wireguard`."""


class KeyFileError(WireGuardError):
    """The private-key file cannot be used (wrong size, too open permissions, not a regular file)."""


class DeviceError(WireGuardError):
    """An ``ip`` / ``wg`` / ``wireguard-go`` command failed; the message carries its stderr."""

    def __init__(self, message: str, *, argv: list[str] | None = None, stderr: str = "") -> None:
        self.argv = argv or []
        self.stderr = stderr
        detail = f"\n{stderr.strip()}" if stderr.strip() else ""
        super().__init__(f"{message}{detail}")


class DumpFormatError(DeviceError):
    """``wg show <dev> dump`` printed something this parser does not understand."""
