"""``clustermesh encryption rotate``: have chosen nodes' agents rotate their WireGuard keys, then
wait until each runs on its new key with nothing left of the rotation.

The nodes and agent pods of each context are read as ``encryption status`` reads them
(:func:`~clustermesh_cli.encryption.discover.read_cluster`). Each chosen node's agent is asked by
pods/exec into its agent container, running ``clustermesh agent encryption rotate --agent-socket
<its socket>`` (the agent's ``POST /v1/encryption/rotate``: the answer names the current and the next public
key); the wait then polls each agent's status exactly as ``encryption status`` does
(:func:`clustermesh_cli.meshstatus.kube.exec_agent_status`) until its ``datapath.encryption``
shows the announced key as ``public-key`` and ``rotation.busy`` false.

The decisions (:func:`select_targets`, :func:`check_rotation`) are pure; the execs are injected.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import click
import websocket

from clustermesh_cli.enable.kube import KubeError
from clustermesh_cli.encryption.audit import current_context
from clustermesh_cli.encryption.discover import AGENT_SELECTOR, ClusterObjects, Target, plan_targets, read_cluster
from clustermesh_cli.encryption.status import AgentAsk
from clustermesh_cli.install import names
from clustermesh_cli.install.manifests import agent_socket_path
from clustermesh_cli.kubecontext import context_configuration
from clustermesh_cli.meshstatus.kube import AGENT_COMMAND, exec_agent_status
from clustermesh_cli.podexec import exec_json
from meshcore.duration import Duration
from meshcore.errors import ConfigError

__all__ = [
    "EXIT_FAIL",
    "EXIT_OK",
    "AgentRotate",
    "NodeRotation",
    "NodeSelectionError",
    "check_rotation",
    "encryption_rotate",
    "rotate_command",
    "run_rotate",
    "select_targets",
]

EXIT_OK: Final = 0
EXIT_FAIL: Final = 1
PARALLEL: Final = 32
POLL_INTERVAL: Final = 1.0  # seconds between two status polls of the nodes still rotating
PROGRESS_EVERY: Final = 2.0  # at most one progress line per this many seconds
_STARTUP_ALLOWANCE: Final = 5.0  # seconds the in-pod CLI may take to start, out of one exec's budget
_ROTATE_WHAT: Final = f"{AGENT_COMMAND} agent encryption rotate"
Read = Callable[[str], ClusterObjects]
#: Asks one node's agent to rotate: (target, timeout) -> its answer, or the error.
AgentRotate = Callable[[Target, float], tuple[Mapping[str, Any] | None, str | None]]
Check = Literal["done", "waiting", "failed"]


class NodeSelectionError(ValueError):
    """A ``--node`` names no node of the given contexts, or several."""


def rotate_command(node: str, timeout: float) -> list[str]:
    """What runs in ``node``'s agent container: ``POST /v1/encryption/rotate`` on its socket, the
    agent's answer bounded a little below the exec's own ``timeout``."""
    inner = max(1.0, timeout - _STARTUP_ALLOWANCE)
    return [
        AGENT_COMMAND,
        "agent",
        "encryption",
        "rotate",
        "--agent-socket",
        agent_socket_path(node),
        "--request-timeout",
        f"{inner:g}",
    ]


# ---- pure ----


def select_targets(targets: Sequence[Target], wanted: Sequence[str], *, all_nodes: bool) -> list[Target]:
    """The targets to rotate: all, or those ``wanted`` names (``cluster/node``, or ``node`` when
    one cluster only has it), in the targets' order. Raises :class:`NodeSelectionError`."""
    if all_nodes:
        return list(targets)
    by_full = {t.node: t for t in targets}
    by_short: dict[str, list[Target]] = {}
    for t in targets:
        by_short.setdefault(t.node.rpartition("/")[2], []).append(t)
    chosen: set[str] = set()
    unknown = []
    for name in wanted:
        if name in by_full:
            chosen.add(name)
        elif len(by_short.get(name, [])) == 1:
            chosen.add(by_short[name][0].node)
        elif name in by_short:
            full = ", ".join(t.node for t in by_short[name])
            raise NodeSelectionError(f"--node {name} is in several clusters ({full}): name it as cluster/node")
        else:
            unknown.append(name)
    if unknown:
        known = ", ".join(t.node for t in targets) or "none"
        raise NodeSelectionError(
            f"unknown node(s): {', '.join(unknown)}; the nodes of the given context(s) are: {known}"
        )
    return [t for t in targets if t.node in chosen]


def check_rotation(status: Mapping[str, Any] | None, old: str | None, new: str) -> tuple[Check, str, str]:
    """Where a node's rotation to ``new`` (from ``old``) stands by its agent's status document:
    (done/waiting/failed, its rotation phase, a detail: the agent's last rotation error or why
    it failed). Done: ``public-key`` is ``new`` and the rotation is not busy any more."""
    datapath = (status or {}).get("datapath")
    enc = datapath.get("encryption") if isinstance(datapath, Mapping) else None
    if not isinstance(enc, Mapping):
        return "waiting", "?", "the agent reports no encryption status"
    rotation = enc.get("rotation")
    rotation = rotation if isinstance(rotation, Mapping) else {}
    phase = str(rotation.get("phase") or "?")
    detail = str(rotation.get("last-error") or "")
    key = enc.get("public-key")
    if key == new:
        return ("waiting" if rotation.get("busy") else "done"), phase, detail
    if key is None:
        return "failed", phase, "the node has no WireGuard key any more (encryption turned off?)"
    if key != old:
        return "failed", phase, f"its key is now {key}, neither the old one nor the announced {new} (rotated again?)"
    return "waiting", phase, detail


@dataclass
class NodeRotation:
    """One chosen node: what its agent answered, then how the wait went."""

    target: Target
    public_key: str | None = None  # before the rotation
    next_public_key: str | None = None
    phase: str = ""
    detail: str = ""
    error: str | None = None  # why it did not rotate (or did not finish)
    done: bool = False
    seconds: float | None = None  # from the request to done

    @property
    def pending(self) -> bool:
        return self.error is None and not self.done

    def to_json(self) -> dict[str, Any]:
        pod = (self.target.pod or {}).get("metadata") or {}
        return {"node": self.target.node, "context": self.target.context,
                "pod": f"{pod.get('namespace')}/{pod.get('name')}" if pod.get("name") else None,
                "public-key": self.public_key, "next-public-key": self.next_public_key, "phase": self.phase or None,
                "rotated": self.done, "seconds": None if self.seconds is None else round(self.seconds, 1),
                "error": self.error}  # fmt: skip


def accept_answer(rot: NodeRotation, answer: Mapping[str, Any] | None, error: str | None) -> None:
    """Record the agent's answer to the rotation request (or its error) in ``rot``."""
    nxt = (answer or {}).get("next-public-key")
    if error is not None or not isinstance(nxt, str) or not nxt:
        rot.error = error or f"the agent answered without a next key: {json.dumps(answer)[:200]}"
        return
    current = (answer or {}).get("public-key")
    rot.public_key = current if isinstance(current, str) else None
    rot.next_public_key = nxt
    rot.phase = str((answer or {}).get("phase") or "")


def progress_line(elapsed: float, pending: Sequence[NodeRotation]) -> str:
    """``  [  4.0s] waiting for 2 node(s): c1/c1-n0 transition, c2/c2-n1 unreachable (...)``."""
    parts = [f"{r.target.node} {r.phase or '?'}" + (f" ({r.detail})" if r.detail else "") for r in pending]
    return f"  [{elapsed:5.1f}s] waiting for {len(pending)} node(s): {', '.join(parts)}"


# ---- the run ----


def _parallel(
    rots: Sequence[NodeRotation], call: Callable[[Target, float], tuple[Any, str | None]], limit: float
) -> list[tuple[Any, str | None]]:
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(rots)), thread_name_prefix="enc-rotate") as pool:
        return list(pool.map(lambda r: call(r.target, limit), rots))


def wait_rotations(
    rots: Sequence[NodeRotation],
    ask: AgentAsk,
    *,
    timeout: float,
    request_timeout: float,
    echo: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll the pending nodes' status until each is done or failed, at most ``timeout`` seconds;
    the ones still pending then get an error naming their phase."""
    start = clock()
    deadline = start + timeout
    last_line = float("-inf")
    pending = [r for r in rots if r.pending]
    while pending and clock() < deadline:
        limit = min(request_timeout, max(1.0, deadline - clock()))
        answers = _parallel(pending, ask, limit)
        now = clock()
        for rot, (status, error) in zip(pending, answers, strict=True):
            if error is not None:
                rot.phase, rot.detail = "unreachable", error
                continue
            assert rot.next_public_key is not None  # pending: the agent announced it
            state, rot.phase, rot.detail = check_rotation(status, rot.public_key, rot.next_public_key)
            if state == "done":
                rot.done, rot.seconds = True, now - start
                echo(f"{rot.target.node}: rotated to {rot.next_public_key} in {rot.seconds:.1f}s")
            elif state == "failed":
                rot.error = rot.detail
                echo(f"{rot.target.node}: {rot.error}")
        pending = [r for r in pending if r.pending]
        if pending and now - last_line >= PROGRESS_EVERY:
            echo(progress_line(now - start, pending))
            last_line = now
        if pending:
            sleep(max(0.0, min(POLL_INTERVAL, deadline - clock())))
    for rot in pending:
        rot.error = f"did not finish within {timeout:g}s (phase {rot.phase or '?'}" + (
            f": {rot.detail})" if rot.detail else ")"
        )


def _stdout(line: str) -> None:
    print(line, flush=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_rotate(
    contexts: Sequence[str],
    *,
    nodes: Sequence[str] = (),
    all_nodes: bool = False,
    wait: bool = True,
    timeout: float = 120.0,
    request_timeout: float = 30.0,
    output: str = "text",
    kubeconfig: Path | None = None,
    namespace: str = "kube-system",
    read: Read | None = None,
    rotate: AgentRotate | None = None,
    ask: AgentAsk | None = None,
    echo: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Rotate the chosen nodes of ``contexts`` (see the module docstring); the exit status.

    Raises :class:`NodeSelectionError` when ``nodes`` do not name nodes of the contexts. Lines go
    to ``echo`` (default: stdout; stderr with ``output`` json, whose document goes to stdout)."""
    say = echo or (_stderr if output == "json" else _stdout)
    if read is None:

        def read(context: str) -> ClusterObjects:
            return read_cluster(context, kubeconfig=kubeconfig, namespace=namespace, selector=AGENT_SELECTOR)

    clusters = []
    for context in contexts:
        try:
            clusters.append(read(context))
        except KubeError as err:
            _stderr(f"Error: {err}")
            return EXIT_FAIL
    try:
        _, targets = plan_targets(clusters, selector=AGENT_SELECTOR)
    except ValueError as err:
        _stderr(f"Error: the nodes' addresses cannot be used: {err}")
        return EXIT_FAIL
    chosen = select_targets(targets, nodes, all_nodes=all_nodes)
    if not chosen:
        _stderr(f"Error: no nodes in {', '.join(contexts)}: nothing to rotate")
        return EXIT_FAIL
    if rotate is None or ask is None:
        websocket.setdefaulttimeout(max(request_timeout, 1.0))  # the WebSocket client has no connect timeout
        try:
            configurations = {c: context_configuration(c, kubeconfig) for c in contexts}
        except ConfigError as err:
            _stderr(f"Error: {err}")
            return EXIT_FAIL
        if rotate is None:

            def rotate(target: Target, limit: float) -> tuple[Mapping[str, Any] | None, str | None]:
                return exec_rotate(configurations[target.context], target.pod or {}, limit)

        if ask is None:

            def ask(target: Target, limit: float) -> tuple[Mapping[str, Any] | None, str | None]:
                probe = exec_agent_status(configurations[target.context], target.pod or {}, limit)
                return probe.status, probe.error

    rots = [NodeRotation(t) for t in chosen]
    for rot in rots:
        if rot.target.pod is None:
            rot.error = rot.target.problem or "no agent pod"
    asked = [r for r in rots if r.error is None]
    if asked:
        for rot, (answer, error) in zip(asked, _parallel(asked, rotate, request_timeout), strict=True):
            accept_answer(rot, answer, error)
    for rot in rots:
        if rot.error is None:
            say(f"{rot.target.node}: rotating {rot.public_key} -> {rot.next_public_key} (phase {rot.phase or '?'})")
        else:
            say(f"{rot.target.node}: not rotated: {rot.error}")
    if wait and any(r.pending for r in rots):
        wait_rotations(rots, ask, timeout=timeout, request_timeout=request_timeout, echo=say, clock=clock, sleep=sleep)
    failed = [r for r in rots if r.error is not None]
    if output == "json":
        print(
            json.dumps({"passed": not failed, "waited": wait, "nodes": [r.to_json() for r in rots]}, indent=2),
            flush=True,
        )
    if failed:
        _stderr(
            f"Error: {len(failed)} of {len(rots)} node(s) did not rotate: "
            + "; ".join(f"{r.target.node}: {r.error}" for r in failed)
        )
        return EXIT_FAIL
    if wait:
        say(f"OK: {len(rots)} node(s) rotated their WireGuard key")
    else:
        say(f"OK: {len(rots)} rotation(s) started; follow them with `clustermesh encryption status`")
    return EXIT_OK


def exec_rotate(configuration: Any, pod: Mapping[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    """Exec :func:`rotate_command` in ``pod``'s agent container; the agent's answer, or the error."""
    md, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    result = exec_json(
        configuration,
        str(md.get("namespace")),
        str(md.get("name")),
        names.AGENT_CONTAINER,
        rotate_command(str(spec.get("nodeName")), timeout),
        timeout,
        what=_ROTATE_WHAT,
    )
    return (result.doc, None) if result.doc is not None else (None, result.error)


# ---- the command ----


@click.command("rotate")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="NAME",
    help="A node to rotate, as cluster/node (or node when only one cluster has that name); repeatable.",
)
@click.option("--all", "all_nodes", is_flag=True, help="Rotate every node of the given contexts (at once).")
@click.option(
    "--context",
    "contexts",
    multiple=True,
    help="Kubeconfig context of a cluster of the mesh; repeat it for every cluster whose nodes you name "
    "(default: the current context).",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The kubeconfig holding the contexts (default: $KUBECONFIG or ~/.kube/config).",
)
@click.option("-n", "--namespace", default="kube-system", show_default=True, help="Namespace of the agent pods.")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until every chosen node runs on its new key and its rotation is over.",
)
@click.option(
    "--timeout",
    type=Duration(),
    default="120",
    show_default=True,
    metavar="DURATION",
    help="How long --wait waits: seconds, or 2m, 5m30s ...",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(1, 120),
    default=30.0,
    show_default=True,
    help="Seconds each agent may take to answer one request (an exec that starts Python in its pod: "
    "seconds on a busy node).",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: a line per node and progress lines; json: progress on stderr, then one document with "
    "every node's old and new key, whether it rotated and how long it took.",
)
def encryption_rotate(
    nodes: tuple[str, ...],
    all_nodes: bool,
    contexts: tuple[str, ...],
    kubeconfig: Path | None,
    namespace: str,
    wait: bool,
    timeout: float,
    request_timeout: float,
    output: str,
) -> None:
    """Rotate nodes' WireGuard keys without losing a packet.

    Each chosen node's agent generates a next key and rotates to it make-before-break: it
    announces the next key (node annotation clustermesh.io/wg-next-pub-key); the node and its
    peers bring up a transition device (the WireGuard device's name plus t, e.g. cilium_wg0t,
    UDP port 51872) on which they peer under the new key; traffic moves to it pair by pair once
    a handshake shows it works; the node commits the new key on its main device, the peers
    replace the old key there, traffic moves back and the transition device is removed. Both
    devices accept traffic all along, so no packet is lost in either direction (Cilium, which
    sets a new key in place, drops traffic until the peers have caught up).

    Use it when a key may have leaked (a node's state directory or disk image copied), as
    periodic hygiene (or let the agents do it: `clustermesh enable
    --wireguard-key-rotation-interval 720h`), or to check that rotation works before relying
    on it. Several nodes may rotate at once. A node whose encryption is off, or whose WireGuard
    is not programmed yet, refuses (its reason is shown).

    The request goes to each node's agent (pods/exec into its agent pod, running `clustermesh
    agent encryption rotate`), which answers with its current and next public key. With --wait
    (the default) every node's status is then polled, as `clustermesh encryption status` reads
    it, until its public key is the announced one and its rotation is over, with a progress
    line (each node's phase: preparing, transition, committing, converging, draining) at most
    every 2 seconds.

    \b
      clustermesh encryption rotate --context lab-c1 --node c1-n0
      clustermesh encryption rotate --context lab-c1 --context lab-c2 --node c1/c1-n0 --node c2/c2-n1
      clustermesh encryption rotate --context lab-c1 --context lab-c2 --all --timeout 5m
      clustermesh encryption rotate --context lab-c1 --all --no-wait -o json

    Exit status: 0 when every chosen node rotated (with --no-wait: started rotating); 1 when a
    node could not be asked or refused, or did not finish within --timeout (the nodes are
    named); 2 on a usage error (neither --node nor --all, an unknown node).
    """
    if bool(nodes) == all_nodes:
        raise click.UsageError(
            "give the nodes to rotate: --node NAME (repeatable) or --all, not both"
            if all_nodes
            else "give the nodes to rotate: --node NAME (repeatable) or --all"
        )
    try:
        chosen = list(dict.fromkeys(contexts)) or [current_context(kubeconfig)]
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    try:
        code = run_rotate(
            chosen,
            nodes=nodes,
            all_nodes=all_nodes,
            wait=wait,
            timeout=timeout,
            request_timeout=request_timeout,
            output=output,
            kubeconfig=kubeconfig,
            namespace=namespace,
        )
    except NodeSelectionError as err:
        raise click.UsageError(str(err)) from None
    sys.exit(code)
