"""``python -m benchmarks [--keys N]`` (``make bench``): run every benchmark and print its figures."""

from __future__ import annotations

import argparse

from benchmarks import agent_scale, apiserver, datapath, kvstore, mesh_propagation, wireguard
from benchmarks import lab as lab_bench


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--keys", type=int, default=50000, help="keys per kvstore case (default 50000)")
    args = parser.parse_args()
    if args.keys < 128:
        parser.error("--keys must be at least 128")
    kvstore.main(args.keys)
    apiserver.main(10000)
    agent_scale.main()
    datapath.main()
    wireguard.main()
    lab_bench.main()
    mesh_propagation.main()


if __name__ == "__main__":
    main()
