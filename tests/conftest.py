"""Shared fixtures: real etcd processes on loopback (see :mod:`lab.etcd`) and clients to them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from lab.etcd import EtcdFleet, EtcdProcess
from lab.shared import CONFORMANCE_DIR, REFERENCE_DOC
from meshcore.kvstore.client import EtcdClient


def pytest_sessionstart(session: pytest.Session) -> None:
    """The corpus and reference tests need ``shared/`` beside the clone (as CI has it)."""
    missing = [p for p in (CONFORMANCE_DIR, REFERENCE_DOC) if not p.exists()]
    if missing:
        raise pytest.UsageError(
            f"missing {', '.join(map(str, missing))}: the tests read the project's shared/ folder, expected "
            "beside this clone; set CLUSTERMESH_SHARED_DIR (or CILIUM_CONFORMANCE_DIR / CILIUM_REFERENCE_DOC)"
        )


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[..., EtcdProcess]]:
    """Start etcds on demand: ``etcd_factory("c1", tls=True)``; all are killed at teardown."""
    fleet = EtcdFleet(tmp_path / "etcd")
    try:
        yield fleet.start
    finally:
        fleet.close()


@pytest.fixture
def etcd(etcd_factory: Callable[..., EtcdProcess]) -> EtcdProcess:
    """A started plain-HTTP etcd."""
    return etcd_factory("etcd")


@pytest.fixture
def etcd_tls(etcd_factory: Callable[..., EtcdProcess]) -> EtcdProcess:
    """A started etcd with TLS and ``--client-cert-auth`` (client certs from ``etcd_tls.pki``)."""
    return etcd_factory("etcd-tls", tls=True)


@pytest.fixture
async def etcd_client(etcd: EtcdProcess) -> AsyncIterator[EtcdClient]:
    """An :class:`EtcdClient` connected to ``etcd``."""
    async with EtcdClient(etcd.client_config()) as client:
        yield client
