"""``python -m lab.kube.api --port N --kubeconfig PATH``: serve the emulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from lab.kube.api.kinds import DEFAULT_CRD_KINDS
from lab.kube.api.server import K8sApiServer


async def _serve(args: argparse.Namespace) -> None:
    server = K8sApiServer(port=args.port, tls_dir=args.tls_dir, bookmark_interval=args.bookmark_interval,
                          crds=() if args.no_default_crds else DEFAULT_CRD_KINDS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        if args.kubeconfig:
            server.write_kubeconfig(args.kubeconfig, args.context)
        print(f"k8sapi serving on {server.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until signalled."""
    p = argparse.ArgumentParser(prog="python -m lab.kube.api", description="Kubernetes API emulator")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--kubeconfig", help="write a kubeconfig (mode 0600) for the server here")
    p.add_argument("--context", default="k8sapi", help="context/cluster/user name in the kubeconfig")
    p.add_argument("--tls-dir", help="serve HTTPS with a fresh CA and certificate written to this directory")
    p.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between watch BOOKMARKs")
    p.add_argument("--no-default-crds", action="store_true", help="do not pre-install the Cilium and MCS CRDs")
    asyncio.run(_serve(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
