"""The node's WireGuard key: X25519, stored as Cilium stores it (32 raw bytes in
``<state dir>/cilium_wg0.key``, mode 0600), published as base64.

The private bytes never appear in a repr, a log line, an error message or an argv; the only way out
is :meth:`WireGuardKey.private_b64`, meant to be written into a pipe read by ``wg``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from encryption.wireguard.errors import KeyFileError
from meshcore.errors import WireError

KEY_FILENAME = "cilium_wg0.key"
KEY_SIZE = 32
#: The all-zero key: Cilium reserves it for its dummy peer, so no node may use it.
ZERO_KEY = base64.b64encode(bytes(KEY_SIZE)).decode()
KEY_FILE_MODE = 0o600


def public_key_of(raw: bytes) -> str:
    """The base64 X25519 public key of the 32-byte private key ``raw`` (what ``wg pubkey`` prints)."""
    if len(raw) != KEY_SIZE:
        raise ValueError(f"a WireGuard private key is {KEY_SIZE} bytes, got {len(raw)}")
    pub = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(pub).decode()


@dataclass(frozen=True, repr=False)
class WireGuardKey:
    """A node's private key (32 raw bytes). Its repr and str show only the public key."""

    raw: bytes = field(repr=False)
    public_key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_key", public_key_of(self.raw))

    def private_b64(self) -> str:
        """The private key in ``wg``'s base64 format: only for feeding ``wg`` through a pipe."""
        return base64.b64encode(self.raw).decode()

    def __repr__(self) -> str:
        return f"WireGuardKey(public_key={self.public_key!r})"

    __str__ = __repr__


def generate() -> WireGuardKey:
    """A fresh random key, clamped as ``wg genkey`` / Go's ``wgtypes.GeneratePrivateKey`` do."""
    raw = bytearray(X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return WireGuardKey(bytes(raw))


def load_or_generate(state_dir: Path, filename: str = KEY_FILENAME) -> tuple[WireGuardKey, bool]:
    """The key stored in ``state_dir/filename``, or a new one written there (Cilium's
    ``loadOrGeneratePrivKey``). Returns ``(key, newly_generated)``.

    A new file is created atomically with mode 0600 and never replaces a file another process
    created meanwhile (that one wins and is loaded). An existing file must be a regular file of 32
    bytes readable by its owner only, else :class:`KeyFileError` says how to fix it.
    """
    path = state_dir / filename
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = generate()
        tmp = _write_temp(path, key)
        try:
            os.link(tmp, path)  # atomic and no-clobber, unlike rename
        except FileExistsError:
            pass  # a concurrent agent won the race: load its key below
        else:
            _fsync_dir(state_dir)
            return key, True
        finally:
            tmp.unlink(missing_ok=True)
    return _read_key(path), False


def write_key(path: Path, key: WireGuardKey) -> None:
    """Atomically replace (or create) the key file ``path`` with ``key``, mode 0600 (for rotation)."""
    tmp = _write_temp(path, key)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def validate_public_key(text: str) -> str:
    """``text`` (a base64 public key from a node record) stripped, or :class:`WireError` if it is
    not base64 of 32 bytes or is the reserved all-zero key."""
    value = text.strip()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"WireGuard public key {value!r} is not valid base64") from exc
    if len(raw) != KEY_SIZE:
        raise WireError(f"WireGuard public key {value!r} decodes to {len(raw)} bytes, expected {KEY_SIZE}")
    if raw == bytes(KEY_SIZE):
        raise WireError(f"WireGuard public key {value!r} is the all-zero key, reserved for Cilium's dummy peer")
    return value


def _write_temp(path: Path, key: WireGuardKey) -> Path:
    """Write ``key``'s raw bytes to a fresh 0600 file beside ``path`` (O_EXCL) and fsync it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, KEY_FILE_MODE)
    try:
        os.fchmod(fd, KEY_FILE_MODE)  # the umask may have narrowed it; never widened
        view = memoryview(key.raw)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _read_key(path: Path) -> WireGuardKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(f"cannot open WireGuard key file {path}: {exc.strerror}; delete it to regenerate") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"WireGuard key file {path} is not a regular file; delete it to regenerate a key")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"WireGuard key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must not be readable by "
                f"group or others; run 'chmod 600 {path}' (or delete it to generate a new key)"
            )
        data = os.read(fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_SIZE:
        size = f"{len(data)}" if len(data) <= KEY_SIZE else f"more than {KEY_SIZE}"
        raise KeyFileError(
            f"WireGuard key file {path} holds {size} bytes, expected {KEY_SIZE} raw bytes (Cilium's format); "
            "delete it to generate a new key"
        )
    return WireGuardKey(data)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
