"""``python -m lab.node --config NODE.json``: run one lab node's runtime until SIGTERM or SIGINT.

The lab supervisor starts it inside the node's network namespace
(``nsenter --net=/run/netns/<node netns> -- python -m lab.node --config F``); the file format is in
:mod:`lab.node.config`. On a signal it stops watching and exits, leaving the pods running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import structlog

from lab.node.config import load_config
from lab.node.runtime import NodeRuntime
from meshcore.cliopts import LOG_LEVELS
from meshcore.errors import MeshError
from meshcore.log import configure, get_logger


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.node", description="The lab's node runtime (its kubelet)")
    p.add_argument("--config", required=True, help="the node's NODE.json (see lab/node/config.py)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    p.add_argument("--log-json", action="store_true", help="log events as JSON lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(level=args.log_level, json=args.log_json)
    for noisy in ("pyroute2", "kubernetes", "asyncio", "urllib3"):  # their debug output drowns ours
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        cfg = load_config(args.config)
    except MeshError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    structlog.contextvars.bind_contextvars(node=cfg.node_name)
    try:
        asyncio.run(_supervise(NodeRuntime(cfg)))
    except MeshError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    return 0


async def _supervise(runtime: NodeRuntime) -> None:
    """Run until SIGTERM/SIGINT, then cancel (the runtime leaves its pods running)."""
    log = get_logger(__name__)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(runtime.run())

    def stop(sig: signal.Signals) -> None:
        log.info("stopping on signal", signal=sig.name)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    try:
        await task
    except asyncio.CancelledError:
        log.info("node runtime stopped; its pods keep running")


if __name__ == "__main__":
    sys.exit(main())
