"""``python -m lab.supervisor --name L``: bring up the lab whose spec ``lab up`` wrote, and serve it."""

from __future__ import annotations

import argparse
import asyncio
import sys

from pyroute2 import config as pyroute2_config

from lab.supervisor.daemon import run
from lab.supervisor.spec import LabSpecError, load


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the spec and run the supervisor until signalled."""
    p = argparse.ArgumentParser(prog="python -m lab.supervisor", description="run one lab (see lab/README.md)")
    p.add_argument("--name", required=True, help="the lab's name (its spec.json must exist)")
    args = p.parse_args(argv)
    try:
        spec = load(args.name)
    except LabSpecError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    pyroute2_config.disable_mp_signal = True  # pyroute2's forked namespace helpers die on SIGTERM, run no handler
    return asyncio.run(run(spec))


if __name__ == "__main__":
    sys.exit(main())
