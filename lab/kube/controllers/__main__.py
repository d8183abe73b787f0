"""``python -m lab.kube.controllers --kubeconfig K [--context C] [--cluster-name NAME] [--log-file F]``.

Runs the scheduler and the controllers of one cluster until SIGTERM or SIGINT (then stops within a
second or two). Log events go to ``--log-file`` (appended; Python's own tracebacks too) or stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

import structlog

from lab.kube.controllers.manager import CONTROLLERS, run
from meshcore.cliopts import LOG_LEVELS, run_until_signalled
from meshcore.log import configure


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.kube.controllers",
                                description="The lab's kube-scheduler and kube-controller-manager for one cluster")
    p.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster's API server")
    p.add_argument("--context", help="kubeconfig context (default: its current-context)")
    p.add_argument("--cluster-name", default="", help="cluster name put on every log event")
    p.add_argument("--log-file", help="append log events here instead of stderr")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    p.add_argument("--log-json", action="store_true", help="log events as JSON lines")
    p.add_argument("--controllers", default=",".join(CONTROLLERS),
                   help=f"comma-separated subset of: {','.join(CONTROLLERS)}")
    p.add_argument("--resync-period", type=float, default=30.0, help="seconds between full re-queues")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.log_file:
        fd = os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    configure(level=args.log_level, json=args.log_json)
    if args.cluster_name:
        structlog.contextvars.bind_contextvars(cluster=args.cluster_name)
    enabled = [c.strip() for c in args.controllers.split(",") if c.strip()]
    run_until_signalled(lambda: run(args.kubeconfig, context=args.context, enabled=enabled,
                                    resync_period=args.resync_period))
    return 0


if __name__ == "__main__":
    sys.exit(main())
