"""Run Cilium's clustermesh-apiserver conformance scenarios against the real thing.

Each ``*.txtar`` of ``shared/conformance/cilium`` is a script (see its SOURCES.md): Kubernetes
objects go in, etcd contents are compared byte for byte. Here every scenario gets a fresh real
etcd process, a fresh Kubernetes API emulator, and our :class:`ApiServer` reading the emulator
through the official Kubernetes client and writing etcd through our gRPC client; ``hive/start``
and ``hive/stop`` start and stop that server. The script engine (quoting, sections, ``*``
retries, ``cmp``/``sed``/``replace``) is shared with the converters' in-memory corpus test.

``python -m lab.conformance [FILE...]`` prints one line per scenario and, last,
``conformance: N passed, M failed, K skipped``; it exits non-zero when any scenario failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import yaml

from clustermesh_apiserver.config import ApiServerConfig
from clustermesh_apiserver.server import ApiServer
from lab.etcd import EtcdProcess
from lab.kube.api import DEFAULT_CRD_KINDS, K8sApiServer, ObjectStore
from lab.scenario_text import (
    ScriptError,
    Workspace,
    format_listing,
    parse_kvstore_list_args,
    parse_script,
    run_script,
)
from lab.shared import CONFORMANCE_DIR
from meshcore import txtar
from meshcore.k8s.client import K8sApi
from meshcore.kvstore.client import EtcdClient
from meshcore.log import configure as configure_logging

T = TypeVar("T")

APISERVER = "clustermesh-apiserver/clustermesh/testdata"
IN_SCOPE = (f"{APISERVER}/*.txtar", "operator/watchers/testdata/servicesync.txtar")

SKIPPED = {
    f"{APISERVER}/endpointslices.txtar": "[dev-only] EndpointSlice export (cilium/state/endpointslices/v1, "
    "zstd+protobuf on the wire, shown as JSON by kvstore/list): not implemented",
    f"{APISERVER}/globalnamespace-endpointslices.txtar": "[dev-only] EndpointSlice export with global "
    "namespaces (cilium/state/endpointslices/v1): not implemented",
}


@dataclass(frozen=True)
class Skew:
    """A version-skewed corpus file: run with one detail normalised (SOURCES.md)."""

    what: str
    strip_expected: str | None = None  # regex removed from every *.expected file
    accept_v1alpha1_crd: bool = False


VERSION_SKEWED = {
    f"{APISERVER}/globalnamespace.txtar": Skew(
        'ipcache "Mask": null (older writer; the newest Cilium omits a nil Mask)', strip_expected=r'\n *"Mask": null,'
    ),
    f"{APISERVER}/globalnamespace-serviceexports.txtar": Skew(
        "ServiceExport CRD/objects are multicluster.x-k8s.io/v1alpha1; the newest Cilium requires v1beta1 "
        "(serviceexports-crd-upgrade.txtar), so the CRD check accepts v1alpha1 here",
        accept_v1alpha1_crd=True,
    ),
}

# The `*` retry: 100 ms doubling to 500 ms, for at most this long per command.
RETRY_BUDGET = 20.0


def corpus_files(corpus: Path = CONFORMANCE_DIR) -> list[str]:
    """The in-scope scenario files, relative to the corpus root."""
    found: list[str] = []
    for pattern in IN_SCOPE:
        found.extend(sorted(str(p.relative_to(corpus)) for p in corpus.glob(pattern)))
    return found


class LoopThread:
    """An asyncio loop in a thread, so the synchronous script engine can drive async parts."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="conformance-loop", daemon=True)
        self._thread.start()

    def run(self, make: Callable[[], Awaitable[T]], *, timeout: float = 30.0) -> T:
        async def wrapped() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Scenario:
    """One scenario's world (etcd, emulator, our server) and its script commands."""

    def __init__(self, rel: str, flags: dict[str, str], workdir: Path, loop: LoopThread, skew: Skew | None) -> None:
        self.rel = rel
        self.flags = flags
        self.loop = loop
        self.skew = skew
        self.etcd = EtcdProcess(workdir / "etcd", name="conformance")
        # The corpus was written against client-go's fake clientset: an empty cluster (no default
        # namespaces), objects stored exactly as given. Only Cilium's own CRDs are installed up
        # front; the scripts add the MCS-API ones.
        store = ObjectStore(require_namespaces=False, default_namespaces=(), server_defaults=False)
        store.install_crds([k for k in DEFAULT_CRD_KINDS if k.group == "cilium.io"])
        self.k8s = K8sApiServer(store)
        self.kubeconfig = workdir / "kubeconfig"
        self.kv: EtcdClient | None = None
        self.server: ApiServer | None = None
        self.server_task: asyncio.Task[None] | None = None
        self.server_k8s: K8sApi | None = None

    def open(self) -> None:
        self.etcd.start()

        async def start() -> None:
            await self.k8s.start()
            self.k8s.write_kubeconfig(self.kubeconfig)
            self.kv = EtcdClient(self.etcd.client_config())
            await self.kv.connect()

        self.loop.run(start)

    def close(self) -> None:
        async def stop() -> None:
            await self._stop_server()
            if self.kv is not None:
                await self.kv.close()
            await self.k8s.stop()

        with contextlib.suppress(Exception):
            self.loop.run(stop)
        self.etcd.close()

    # --- the component ------------------------------------------------------------------------

    def config(self, env: dict[str, str]) -> ApiServerConfig:
        flags = self.flags
        default_global = flags.get("clustermesh-default-global-namespace", "true") == "true"
        if "CLUSTERMESH_DEFAULT_GLOBAL_NAMESPACE" in env:
            default_global = env["CLUSTERMESH_DEFAULT_GLOBAL_NAMESPACE"] == "true"
        config = ApiServerConfig(
            cluster_name=flags["cluster-name"],
            cluster_id=int(flags["cluster-id"]),
            etcd=self.etcd.client_config(),
            kubeconfig=self.kubeconfig,
            health_port=0,
            enable_mcs_api=flags.get("clustermesh-enable-mcs-api", "false") == "true",
            enable_cilium_endpoint_slice=flags.get("enable-cilium-endpoint-slice", "false") == "true",
            default_global_namespace=default_global,
            service_v2_mode=flags.get("clustermesh-service-v2", ""),
            cluster_config_reassert=300.0,
        )
        if self.skew is not None and self.skew.accept_v1alpha1_crd:
            config = replace(config, serviceexport_crd_versions=("v1beta1", "v1alpha1"))
        return config

    async def _start_server(self, env: dict[str, str]) -> None:
        if self.server_task is not None:
            raise ScriptError("hive/start: already started")
        self.server_k8s = await K8sApi.from_kubeconfig(self.kubeconfig)
        self.server = ApiServer(self.config(env), k8s=self.server_k8s)
        self.server_task = asyncio.create_task(self.server.run(), name="apiserver")

    async def _stop_server(self) -> None:
        task, self.server_task = self.server_task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self.server_k8s is not None:
            await self.server_k8s.close()
            self.server_k8s = None

    def __call__(self, name: str, args: list[str], ws: Workspace) -> None:
        if name == "hive/start":
            env = dict(ws.env)
            self.loop.run(lambda: self._start_server(env))
        elif name == "hive/stop":
            self.loop.run(self._stop_server)
        elif name in ("k8s/add", "k8s/update", "k8s/delete"):
            self._k8s(name.split("/", 1)[1], args, ws)
        elif name == "kvstore/list":
            self._kvstore_list(args, ws)
        elif name == "kvstore/update":
            key, file_name = args
            value = ws.read(file_name).strip()
            self.loop.run(lambda: self._kv().put(key, value))
        elif name == "kvstore/delete":
            (key,) = args
            self.loop.run(lambda: self._kv().delete(key))
        elif name in ("health", "health/ok"):
            self._health(name, args)
        else:
            raise ScriptError(f"unknown command {name!r}")

    def _kv(self) -> EtcdClient:
        assert self.kv is not None
        return self.kv

    def _k8s(self, op: str, files: list[str], ws: Workspace) -> None:
        objects = [
            obj for file_name in files for obj in yaml.safe_load_all(ws.read(file_name).decode()) if obj
        ]

        async def apply() -> None:
            store = self.k8s.store
            for obj in objects:
                meta = obj.get("metadata") or {}
                try:
                    if op == "add":
                        store.create(obj)
                    elif op == "update":
                        current = store.get(obj["kind"], meta["name"], meta.get("namespace"))
                        updated = dict(obj, metadata=dict(meta, resourceVersion=current["metadata"]["resourceVersion"]))
                        store.update(updated)
                    else:
                        store.delete(obj["kind"], meta["name"], meta.get("namespace"))
                except Exception as err:  # the emulator's ApiError and lookups
                    raise ScriptError(f"k8s/{op} {obj.get('kind')} {meta.get('name')}: {err}") from err

        self.loop.run(apply)

    def _kvstore_list(self, args: list[str], ws: Workspace) -> None:
        largs = parse_kvstore_list_args(args)

        async def listing() -> dict[str, bytes]:
            result = await self._kv().list_prefix(largs.prefix)
            return {item.key: item.value for item in result.items}

        out = format_listing(self.loop.run(listing), largs)
        if largs.outfile is None:
            ws.stdout = out
        else:
            ws.write(largs.outfile, out)

    def _health(self, name: str, args: list[str]) -> None:
        if self.server is None:
            raise ScriptError("health: the component is not started")
        opts = dict(a.lstrip("-").split("=", 1) for a in args if "=" in a)
        levels = {"ok"} if name == "health/ok" else set(opts.get("levels", "ok").split(","))
        pattern = re.compile(opts.get("match", ""))
        health = self.server.health()
        for component, status in health.items():
            level = status.split(":", 1)[0]
            if pattern.search(component) and level in levels:
                return
        raise ScriptError(f"no component matching {pattern.pattern!r} at level {sorted(levels)}: {health}")


def _sleep_for_retry(attempt: int) -> None:
    time.sleep(min(0.5, 0.1 * 2 ** (attempt - 1)))


def run_file(rel: str, *, corpus: Path = CONFORMANCE_DIR, loop: LoopThread) -> None:
    """Run one scenario; raises :class:`ScriptError` (with the failing line) when it fails."""
    archive = txtar.parse_file(corpus / rel)
    script = parse_script(archive)
    ws = Workspace.from_archive(archive)
    skew = VERSION_SKEWED.get(rel)
    if skew is not None and skew.strip_expected:
        for name, data in list(ws.files.items()):
            if name.endswith(".expected"):
                ws.files[name] = re.sub(skew.strip_expected, "", data.decode()).encode()
    with tempfile.TemporaryDirectory(prefix="conformance-") as workdir:
        scenario = Scenario(rel, script.flags, Path(workdir), loop, skew)
        try:
            scenario.open()
            attempts = int(RETRY_BUDGET / 0.5) + 4
            run_script(script, ws, scenario, attempts=attempts, on_retry=_sleep_for_retry)
        finally:
            scenario.close()


@dataclass
class Outcome:
    rel: str
    status: str  # passed | failed | skipped
    detail: str = ""
    seconds: float = 0.0


def run_corpus(files: list[str] | None = None, *, corpus: Path = CONFORMANCE_DIR) -> list[Outcome]:
    """Run every in-scope scenario (or ``files``) and return their outcomes."""
    outcomes = []
    loop = LoopThread()
    try:
        for rel in files or corpus_files(corpus):
            if rel in SKIPPED:
                outcomes.append(Outcome(rel, "skipped", SKIPPED[rel]))
                continue
            start = time.monotonic()
            try:
                run_file(rel, corpus=corpus, loop=loop)
            except ScriptError as err:
                outcomes.append(Outcome(rel, "failed", str(err), time.monotonic() - start))
                continue
            except Exception:
                outcomes.append(Outcome(rel, "failed", traceback.format_exc(limit=6), time.monotonic() - start))
                continue
            skew = VERSION_SKEWED.get(rel)
            detail = f"version-skewed, normalised: {skew.what}" if skew else ""
            outcomes.append(Outcome(rel, "passed", detail, time.monotonic() - start))
    finally:
        loop.close()
    return outcomes


def summary_line(outcomes: list[Outcome]) -> str:
    count = {s: sum(1 for o in outcomes if o.status == s) for s in ("passed", "failed", "skipped")}
    return f"conformance: {count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="scenario files relative to the corpus (default: all in scope)")
    parser.add_argument("--corpus", type=Path, default=CONFORMANCE_DIR, help="corpus root (shared/conformance/cilium)")
    args = parser.parse_args(argv)
    configure_logging(level="error")
    if not args.corpus.is_dir():
        parser.error(f"no corpus at {args.corpus}; set CILIUM_CONFORMANCE_DIR or --corpus")
    outcomes = run_corpus(args.files or None, corpus=args.corpus)
    for outcome in outcomes:
        timing = f" ({outcome.seconds:.1f}s)" if outcome.status != "skipped" else ""
        print(f"{outcome.status.upper():7} {outcome.rel}{timing}")
        if outcome.detail:
            for line in outcome.detail.rstrip().splitlines():
                print(f"        {line}")
    print(summary_line(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
