"""A container program for the node runtime tests (run with the venv's python as a pod's command).

It writes a JSON report of what it sees (environment, host name, working directory, network
namespace, cgroup, the content of the files named with ``--read``, whether ``--try-write`` paths
are writable), then serves HTTP on ``--port`` (``/healthz``), or exits with ``--exit``, or sleeps.
On SIGTERM it writes ``--on-term`` and exits 0.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType


def report(args: argparse.Namespace) -> dict[str, object]:
    files: dict[str, str] = {}
    for path in args.read:
        try:
            files[path] = Path(path).read_text()
        except OSError as err:
            files[path] = f"ERROR {err.strerror}"
    writable: dict[str, bool] = {}
    for path in args.try_write:
        try:
            Path(path).write_text("x")
            writable[path] = True
        except OSError:
            writable[path] = False
    return {
        "pid": os.getpid(), "env": dict(os.environ), "hostname": socket.gethostname(), "cwd": os.getcwd(),
        "netns": os.stat("/proc/self/ns/net").st_ino, "mntns": os.stat("/proc/self/ns/mnt").st_ino,
        "cgroup": Path("/proc/self/cgroup").read_text(), "files": files, "writable": writable, "argv": sys.argv,
    }  # fmt: skip


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b"ok\n"
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--report")
    p.add_argument("--read", action="append", default=[])
    p.add_argument("--try-write", action="append", default=[])
    p.add_argument("--port", type=int)
    p.add_argument("--exit", type=int)
    p.add_argument("--on-term")
    p.add_argument("--append", nargs=2, metavar=("FILE", "TEXT"))
    args = p.parse_args()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if args.on_term:
            Path(args.on_term).write_text(f"terminated by signal {signum}\n")
        print("got SIGTERM, exiting", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(f"podapp starting: {sys.argv[1:]}", flush=True)
    if args.append:
        with open(args.append[0], "a") as f:
            f.write(args.append[1] + "\n")
    if args.report:
        tmp = args.report + ".tmp"
        Path(tmp).write_text(json.dumps(report(args)))
        os.replace(tmp, args.report)
    if args.exit is not None:
        print(f"exiting with {args.exit}", flush=True)
        return int(args.exit)
    if args.port:
        server = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Health)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
