"""WireGuard benchmark: encrypted cross-cluster TCP through the agent against the same path built by
hand with wireguard-go (issue 11's target: ratio >= 0.9).

``python -m benchmarks.wireguard [--seconds S] [--runs R]`` (also part of ``make bench``). Both paths
are built side by side (:mod:`benchmarks.wgpaths`): two instances of one topology, clusters c1 and
c2 of one node each in tunnel mode (VXLAN, the agent's default), pod c1 -> pod c2. The hand-built
path is the plain-kernel VXLAN mesh plus wireguard-go configured with ``wg`` and the agent's
steering typed by hand; the agent path is two ``NodeDatapath`` processes with
``--encryption wireguard``: the only difference is agent (eBPF programs, agent-managed WireGuard)
against hand configuration. Same MTUs on both: underlay 1550, WireGuard 1470 (underlay - 80, as
the agent sets it), VXLAN 1500, pods 1500.

Single-stream TCP (:func:`lab.net.tcp_throughput`, as the datapath benchmark) runs interleaved:
hand-built, agent, hand-built, agent, ..., then one closing hand-built run, so each agent run has
an in-run baseline of the two hand-built runs around it. Reported: each agent run beside its
baseline, the median ratio and the spread of the ratios (the machine's 2 CPUs are shared, and
wireguard-go is CPU-bound). The agent processes are paused (SIGSTOP) during the hand-built runs, so
that their idle control-plane work (a few % of a CPU) does not slow the baseline; their CPU time
during their own runs is reported. Per run also: the sender's WireGuard bytes (proof the traffic was
encrypted) and the IP fragmentation seen in the sender's and receiver's node namespaces: VXLAN
inside WireGuard with 1500-byte pods makes 1550-byte UDP datagrams for a 1470-byte device, so
both paths fragment (Cilium lowers the pod route MTU instead); a path fragmenting while the
other does not would be a finding of its own and is flagged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.wgpaths import BenchPath, agent_path, hand_built_path
from lab.net import nsutil, tcp_throughput
from lab.prereqs import datapath_unavailable
from meshcore.log import configure as configure_logging

TARGET = 0.9
SECONDS = 3.0
RUNS = 3
PORT = 5801
ENCRYPTED_SHARE = 0.9
"""The sender's WireGuard device must have sent at least this share of the TCP bytes (else the
traffic bypassed it and the run is refused)."""


@dataclass(frozen=True)
class Sample:
    """One measurement on one path: TCP throughput and what the node namespaces counted meanwhile."""

    path: str
    bps: float
    wg_tx_bytes: int
    fragmented: int  # sender node: datagrams fragmented (Ip FragOKs)
    fragments: int  # sender node: fragments made (Ip FragCreates)
    reassembled: int  # receiver node: datagrams reassembled (Ip ReasmOKs)
    reassembly_failed: int  # receiver node: Ip ReasmFails
    agent_cpu_s: float = 0.0  # CPU seconds the agent processes used meanwhile (paused in hand-built runs)


@dataclass(frozen=True)
class Paired:
    """An agent run with its in-run baseline (the mean of the hand-built runs around it)."""

    agent_bps: float
    baseline_bps: tuple[float, ...]

    @property
    def baseline_mean(self) -> float:
        return sum(self.baseline_bps) / len(self.baseline_bps)

    @property
    def ratio(self) -> float:
        return self.agent_bps / self.baseline_mean


def pair_runs(baselines: list[float], agents: list[float]) -> list[Paired]:
    """Agent run ``i`` ran between hand-built runs ``i`` and ``i + 1`` (the latter may be missing)."""
    if len(baselines) < len(agents):
        raise ValueError(f"{len(agents)} agent runs need at least as many baseline runs, got {len(baselines)}")
    return [Paired(a, tuple(baselines[i : i + 2])) for i, a in enumerate(agents)]


def summary(pairs: list[Paired]) -> dict[str, float]:
    """Median ratio and the spread (min, max, max - min) of the ratios."""
    ratios = [p.ratio for p in pairs]
    return {"median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
            "spread": max(ratios) - min(ratios)}  # fmt: skip


def parse_snmp_ip(text: str) -> dict[str, int]:
    """The ``Ip:`` counters of a ``/proc/net/snmp`` text (header line, then values line)."""
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Ip:")]
    if len(rows) < 2:
        raise ValueError("no Ip: header and values in /proc/net/snmp")
    return {k: int(v) for k, v in zip(rows[0], rows[1], strict=True)}


def _ip_counters(ns: str) -> dict[str, int]:
    return parse_snmp_ip(nsutil.run_in(ns, "cat", "/proc/net/snmp").stdout)


def _wg_tx(ns: str, device: str) -> int:
    out = nsutil.run_in(ns, "wg", "show", device, "transfer").stdout
    return sum(int(line.split("\t")[2]) for line in out.splitlines() if line.count("\t") == 2)


def mtus(path: BenchPath) -> dict[str, int]:
    """MTUs along the path on the sender's side: pod eth0, the VXLAN device, WireGuard, underlay."""
    sender = path.nodes[0]

    def links(ns: str) -> list[dict[str, Any]]:
        return list(json.loads(nsutil.run_in(ns, "ip", "-d", "-j", "link", "show").stdout))

    pod = {link["ifname"]: int(link["mtu"]) for link in links(sender.pod.ns)}
    out = {"pod": pod["eth0"]}
    for link in links(sender.node.ns):
        kind = (link.get("linkinfo") or {}).get("info_kind")
        if kind == "vxlan":
            out["vxlan"] = int(link["mtu"])
        elif link["ifname"] == sender.device:
            out["wireguard"] = int(link["mtu"])
        elif link["ifname"] == sender.node.underlay_ifname:
            out["underlay"] = int(link["mtu"])
    return out


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (all threads), 0 for a process gone."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _paused(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """SIGSTOP the agents for a hand-built run (their status writes and device dumps would take CPU
    from the baseline on 2 CPUs; their programs and wireguard-go keep working), SIGCONT after."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGCONT)


def measure(path: BenchPath, seconds: float, port: int, *, agents: list[subprocess.Popen[bytes]]) -> Sample:
    """One single-stream TCP run pod c1 -> pod c2 with the counters around it and the CPU time of
    ``agents`` (the agent path's processes: paused unless ``path`` is the agent path)."""
    sender, receiver = path.nodes
    pids = [p.pid for p in agents]
    tx0, s0, r0 = _wg_tx(sender.node.ns, sender.device), _ip_counters(sender.node.ns), _ip_counters(receiver.node.ns)
    with contextlib.nullcontext() if path.kind == "agent" else _paused(agents):
        cpu0 = _cpu_seconds(pids)
        bps = tcp_throughput(path.client, path.server, seconds, port=port)
        cpu1 = _cpu_seconds(pids)
    tx1, s1, r1 = _wg_tx(sender.node.ns, sender.device), _ip_counters(sender.node.ns), _ip_counters(receiver.node.ns)
    sample = Sample(
        path=path.kind, bps=bps, wg_tx_bytes=tx1 - tx0,
        fragmented=s1["FragOKs"] - s0["FragOKs"], fragments=s1["FragCreates"] - s0["FragCreates"],
        reassembled=r1["ReasmOKs"] - r0["ReasmOKs"], reassembly_failed=r1["ReasmFails"] - r0["ReasmFails"],
        agent_cpu_s=cpu1 - cpu0,
    )  # fmt: skip
    if sample.wg_tx_bytes < ENCRYPTED_SHARE * bps * seconds / 8:
        raise RuntimeError(f"{path.kind} path: the WireGuard device sent {sample.wg_tx_bytes} bytes for about "
                           f"{bps * seconds / 8:.0f} TCP bytes: traffic bypassed the encryption")  # fmt: skip
    return sample


def run(seconds: float = SECONDS, runs: int = RUNS) -> dict[str, Any]:
    """Build both paths, run them interleaved (hand-built first and last), return every figure."""
    with hand_built_path() as hand, agent_path() as agent:
        mtu = {"hand-built": mtus(hand), "agent": mtus(agent)}
        built = {
            p.kind: {"prefix": p.topo.prefix, "devices": [n.device for n in p.nodes], "pin_root": str(p.pin_root or "")}
            for p in (hand, agent)
        }
        hand_samples: list[Sample] = []
        agent_samples: list[Sample] = []
        port = PORT
        for _ in range(runs):
            hand_samples.append(measure(hand, seconds, port, agents=agent.agents))
            agent_samples.append(measure(agent, seconds, port + 1, agents=agent.agents))
            port += 2
        hand_samples.append(measure(hand, seconds, port, agents=agent.agents))
    pairs = pair_runs([s.bps for s in hand_samples], [s.bps for s in agent_samples])
    return {
        "seconds": seconds,
        "runs": [_run_json(p) for p in pairs],
        **summary(pairs),
        "target": TARGET,
        "mtu": mtu,
        "built": built,
        "samples": {"hand-built": [asdict(s) for s in hand_samples], "agent": [asdict(s) for s in agent_samples]},
        "fragmentation": fragmentation(hand_samples, agent_samples),
    }


def _run_json(p: Paired) -> dict[str, Any]:
    return {"agent_bps": p.agent_bps, "baseline_bps": list(p.baseline_bps), "baseline_mean_bps": p.baseline_mean,
            "ratio": p.ratio}  # fmt: skip


def fragmentation(hand: list[Sample], agent: list[Sample]) -> dict[str, Any]:
    """Whether each path fragments, and the finding if only the agent's does."""
    hand_frag, agent_frag = any(s.fragmented for s in hand), any(s.fragmented for s in agent)
    finding = ""
    if agent_frag and not hand_frag:
        finding = "the agent path fragments while the hand-built one does not"
    elif hand_frag and not agent_frag:
        finding = "the hand-built path fragments while the agent's does not"
    return {"hand-built": hand_frag, "agent": agent_frag, "finding": finding}


def _gbit(bps: float) -> str:
    return f"{bps / 1e9:.3f} Gbit/s"


def _mark(ratio: float, target: float) -> str:
    return f">= {target:g} " + ("ok" if ratio >= target else "MISSED")


def report(result: dict[str, Any]) -> None:
    """Print ``result`` (from :func:`run`) in the other benchmarks' table style."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table()
    for column in ("measure", "value", "baseline", "ratio", "target"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for i, r in enumerate(result["runs"], 1):
        around = " / ".join(f"{b / 1e9:.3f}" for b in r["baseline_bps"])
        baseline = f"hand-built {_gbit(r['baseline_mean_bps'])} ({around})"
        table.add_row(f"agent, run {i}", _gbit(r["agent_bps"]), baseline, f"{r['ratio']:.2f}", "")
    table.add_row(
        "encrypted cross-cluster TCP, agent / hand-built wireguard-go, median of the runs' ratios", "", "",
        f"{result['median_ratio']:.2f}", _mark(result["median_ratio"], result["target"]),
    )  # fmt: skip
    console.print(table)
    frag = result["fragmentation"]
    mtu = result["mtu"]
    per_path = []
    for kind in ("hand-built", "agent"):
        ss = result["samples"][kind]
        per_path.append(
            f"{kind}: MTU pod {mtu[kind].get('pod')} / VXLAN {mtu[kind].get('vxlan')} / WireGuard "
            f"{mtu[kind].get('wireguard')} / underlay {mtu[kind].get('underlay')}; fragmented datagrams per run "
            f"[{', '.join(str(s['fragmented']) for s in ss)}], reassembly failures "
            f"[{', '.join(str(s['reassembly_failed']) for s in ss)}]"
        )
    hand = result["samples"]["hand-built"]
    agent_cpu = sum(s["agent_cpu_s"] for s in result["samples"]["agent"]) / (len(result["runs"]) * result["seconds"])
    hand_gbit = ", ".join(f"{s['bps'] / 1e9:.3f}" for s in hand)
    console.print(
        f"Single-stream TCP pod c1 -> pod c2, {result['seconds']:g} s per run, interleaved hand-built / agent "
        "with a closing hand-built run, each agent run's baseline the mean of the hand-built runs around it; "
        f"ratio spread {result['min_ratio']:.2f}-{result['max_ratio']:.2f} ({result['spread']:.2f}). "
        f"Hand-built runs [{hand_gbit}] Gbit/s. "
        "Both paths tunnel mode, wireguard-go (no kernel WireGuard here), CPU-bound on 2 shared CPUs. The agent "
        f"processes (control plane) used {agent_cpu:.1%} of a CPU during their runs and are paused (SIGSTOP) "
        "during the hand-built runs."
    )  # fmt: skip
    console.print("; ".join(per_path) + ".")
    if frag["finding"]:
        console.print(f"[bold]fragmentation finding[/bold]: {frag['finding']}")
    elif frag["agent"]:
        console.print(
            "Both paths fragment alike: VXLAN (pod 1500 + 50) inside a 1470-byte WireGuard device; neither "
            "lowers the pods' MTU (Cilium sets the pod route MTU to leave room for both)."
        )


def main(seconds: float = SECONDS, runs: int = RUNS) -> dict[str, Any] | None:
    """Run and print the benchmark; returns its figures (``None`` when skipped)."""
    reason = datapath_unavailable()
    if reason is not None:
        print(f"== wireguard: skipped ({reason})")
        return None
    configure_logging(level="warning")
    print(f"== wireguard: encrypted cross-cluster TCP through the agent vs hand-built wireguard-go "
          f"({runs} interleaved runs of {seconds:g} s)")  # fmt: skip
    result = run(seconds, runs)
    report(result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wireguard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"seconds per run (default {SECONDS:g})")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"agent runs (default {RUNS})")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if args.seconds <= 0 or args.runs < 1:
        parser.error("--seconds must be positive and --runs at least 1")
    figures = main(args.seconds, args.runs)
    if args.json and figures is not None:
        print(json.dumps(figures, indent=2))
