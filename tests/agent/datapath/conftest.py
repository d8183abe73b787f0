"""Fixtures for the agent datapath tests: a private bpffs pin root, and a TCP forwarder that makes a
loopback port of this (host) namespace reachable as the same loopback port inside a node's network
namespace (the agent runs in the node namespace; etcd and the Kubernetes API emulator listen on the
host's loopback). Nothing touches the host's interfaces."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_CLONE_NEWNET = 0x40000000


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "datapath tests need root"
    if not os.path.ismount("/sys/fs/bpf"):
        return "bpffs is not mounted on /sys/fs/bpf (run scripts/setup.sh)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (run scripts/setup.sh)"
    if shutil.which("ip") is None:
        return "iproute2 missing"
    return None


_REASON = _skip_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=_REASON))


def _rm_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in path.iterdir():
        if child.is_dir():
            _rm_tree(child)
        else:
            child.unlink()
    path.rmdir()


@pytest.fixture
def pin_root() -> Iterator[Path]:
    """A fresh directory on bpffs, removed with everything pinned under it."""
    root = Path("/sys/fs/bpf") / f"cmdp-{uuid.uuid4().hex[:10]}"
    root.mkdir()
    try:
        yield root
    finally:
        _rm_tree(root)


def _listen_in_netns(ns: str, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port created inside namespace ``ns`` (by a throwaway thread
    that enters it; a socket stays in the namespace it was created in)."""
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            s.settimeout(0.5)
            result.append(s)
        except BaseException as exc:  # reported to the caller
            result.append(exc)

    t = threading.Thread(target=make)  # the thread ends inside ns; it never runs anything else
    t.start()
    t.join(10)
    if not result or isinstance(result[0], BaseException):
        raise RuntimeError(f"cannot listen in {ns}:{port}: {result}")
    return result[0]


class Forwarder:
    """Forward 127.0.0.1:port inside several namespaces to 127.0.0.1:port here."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def add(self, ns: str, port: int) -> None:
        lsock = _listen_in_netns(ns, port)
        self._sockets.append(lsock)
        t = threading.Thread(target=self._accept, args=(lsock, port), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, lsock: socket.socket, port: int) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = lsock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                up = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                conn.close()
                continue
            up.settimeout(None)
            conn.settimeout(None)
            self._sockets += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(2)


@pytest.fixture
def forwarder() -> Iterator[Callable[[str, int], None]]:
    """``forwarder(ns, port)``: 127.0.0.1:port in ``ns`` reaches 127.0.0.1:port here."""
    fwd = Forwarder()
    try:
        yield fwd.add
    finally:
        fwd.close()


@pytest.fixture(scope="session")
def forwarder_cls() -> type[Forwarder]:
    """The :class:`Forwarder` class, for module-scoped fixtures (test modules cannot import conftest)."""
    return Forwarder
