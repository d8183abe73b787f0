"""``python -m lab.kube.api``: serve the emulator until SIGTERM or SIGINT.

Without ``--etcd-config`` the objects live in memory (lost on exit). With it they live in that etcd
under ``--etcd-prefix`` as kube-apiserver keeps them, and a restart (even after SIGKILL) picks up every
object, resourceVersion and the watch history etcd still has. Exit status 1 with a one-line
``error: ...`` on stderr when etcd cannot be reached within ``--etcd-timeout`` or an option is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from lab.kube.api.defaults import DEFAULT_SERVICE_CIDR
from lab.kube.api.errors import ApiError
from lab.kube.api.etcdbacking import DEFAULT_HISTORY_WINDOW, EtcdBacking
from lab.kube.api.kinds import DEFAULT_CRD_KINDS
from lab.kube.api.server import K8sApiServer
from lab.kube.api.store import ObjectStore
from meshcore.errors import MeshError
from meshcore.kvstore.config import load_etcd_config


def _store(args: argparse.Namespace) -> ObjectStore:
    backing = None
    if args.etcd_config:
        backing = EtcdBacking(load_etcd_config(args.etcd_config), prefix=args.etcd_prefix,
                              history_window=args.history_window)
        backing.connect(wait=args.etcd_timeout)
    store = ObjectStore(history_limit=args.history_limit, backing=backing, service_cidr=args.service_cidr)
    store.install_crds(() if args.no_default_crds else DEFAULT_CRD_KINDS)
    return store


async def _serve(args: argparse.Namespace, store: ObjectStore) -> None:
    server = K8sApiServer(store, port=args.port, tls_dir=args.tls_dir, tls_sans=args.tls_san,
                          bookmark_interval=args.bookmark_interval, pod_log_root=args.pod_log_root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        server.ensure_kubernetes_service()
        if args.kubeconfig:
            server.write_kubeconfig(args.kubeconfig, args.context)
        where = f" (etcd prefix {args.etcd_prefix}, resourceVersion {store.resource_version})" if args.etcd_config \
            else " (in memory)"
        print(f"k8sapi serving on {server.url}{where}", flush=True)
        await stop.wait()


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m lab.kube.api", description="Kubernetes API emulator")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--kubeconfig", help="write a kubeconfig (mode 0600) for the server here")
    p.add_argument("--context", default="k8sapi", help="context/cluster/user name in the kubeconfig")
    p.add_argument("--tls-dir", help="serve HTTPS with the CA and certificate in this directory (created if "
                   "absent, reused otherwise)")
    p.add_argument("--tls-san", action="append", default=[], metavar="NAME_OR_IP",
                   help="extra DNS name or IP for the serving certificate (repeatable)")
    p.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between watch BOOKMARKs")
    p.add_argument("--no-default-crds", action="store_true", help="do not pre-install the Cilium and MCS CRDs")
    p.add_argument("--etcd-config", metavar="FILE",
                   help="etcd client YAML (endpoints, trusted-ca-file, cert-file, key-file); default: in memory")
    p.add_argument("--etcd-prefix", default="/registry", help="etcd key prefix (default /registry)")
    p.add_argument("--etcd-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up when etcd is unreachable this long at start (default 30)")
    p.add_argument("--history-window", type=int, default=DEFAULT_HISTORY_WINDOW, metavar="REVISIONS",
                   help="etcd revisions replayed into the watch history at start (default %(default)s)")
    p.add_argument("--history-limit", type=int, default=10_000, metavar="EVENTS",
                   help="watch history kept per resource (default %(default)s)")
    p.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR,
                   help=f"Service cluster-IP range (default {DEFAULT_SERVICE_CIDR})")
    p.add_argument("--pod-log-root", metavar="DIR",
                   help="pods/log reads <DIR>/<node>/pods/<ns>_<name>_<uid>/<container>/<restart>.log")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until signalled."""
    args = parser().parse_args(argv)
    try:
        store = _store(args)
    except (MeshError, ApiError, ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 1
    try:
        asyncio.run(_serve(args, store))
    except OSError as e:  # e.g. the port is taken
        print(f"error: cannot serve on port {args.port}: {e.strerror or e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if store.backing is not None:
            store.backing.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
