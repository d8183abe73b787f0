"""``clustermesh encryption rotate``: argument errors, node selection, the request and the wait loop
against fake cluster reads and fake agent answers (a fake clock: no real waiting), and the command
end to end with the pod exec replaced (the real exec path is the one ``encryption status`` uses)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import websocket
from click.testing import CliRunner

from clustermesh_cli.encryption import encryption
from clustermesh_cli.encryption import rotate as rotate_mod
from clustermesh_cli.encryption.discover import ClusterObjects, Target
from clustermesh_cli.encryption.rotate import (
    NodeSelectionError,
    check_rotation,
    rotate_command,
    run_rotate,
    select_targets,
)
from clustermesh_cli.meshstatus.model import AgentProbe
from clustermesh_cli.podexec import ExecResult

NODES = {"c1": ["c1-n0", "c1-n1"], "c2": ["c2-n0", "shared"], "c3": ["shared"]}
OLD = {f"{c}/{n}": f"old{c}{n}".replace("-", "").ljust(43, "A") + "=" for c, ns in NODES.items() for n in ns}
NEW = {k: v.replace("old", "new") for k, v in OLD.items()}


def _cluster(name: str) -> ClusterObjects:
    nodes, pods = [], []
    for i, n in enumerate(NODES[name]):
        nodes.append(
            {
                "metadata": {"name": n},
                "status": {"addresses": [{"type": "InternalIP", "address": f"10.{name[1]}.0.{i + 1}"}]},
            }
        )
        pods.append(
            {
                "metadata": {"name": f"agent-{n}", "namespace": "kube-system"},
                "spec": {"nodeName": n},
                "status": {"phase": "Running"},
            }
        )
    return ClusterObjects(f"ctx-{name}", name, nodes, agent_pods=pods)  # fmt: skip


def read(context: str) -> ClusterObjects:
    return _cluster(context.removeprefix("ctx-"))


def status(key: str | None, phase: str = "idle", busy: bool = False, **rotation: Any) -> dict[str, Any]:
    return {"datapath": {"encryption": {"mode": "wireguard", "public-key": key,
                                        "rotation": {"phase": phase, "busy": busy, **rotation}}}}  # fmt: skip


class Clock:
    """Fake monotonic time: only sleeping advances it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Agents:
    """Fake agents: ``rotate`` answers (or refuses, per ``refuse``); ``ask`` plays each node's
    scripted status documents in turn (the last one repeats)."""

    def __init__(self, scripts: Mapping[str, Sequence[dict[str, Any] | str]], refuse: Mapping[str, str] = {},
                 clock: Clock | None = None) -> None:  # fmt: skip
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.refuse = dict(refuse)
        self.clock = clock
        self.rotated: list[str] = []
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def rotate(self, target: Target, timeout: float) -> tuple[Mapping[str, Any] | None, str | None]:
        with self._lock:
            self.rotated.append(target.node)
        if target.node in self.refuse:
            return None, self.refuse[target.node]
        short = target.node.split("/")[1]
        return {"node": short, "public-key": OLD[target.node], "next-public-key": NEW[target.node],
                "phase": "preparing"}, None  # fmt: skip

    def ask(self, target: Target, timeout: float) -> tuple[Mapping[str, Any] | None, str | None]:
        with self._lock:
            self.asked.append(target.node)
            script = self.scripts[target.node]
            item = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(item, str):
            return None, item
        return item, None


def run(
    agents: Agents, clock: Clock, contexts: Sequence[str] = ("ctx-c1", "ctx-c2"), **kw: Any
) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = run_rotate(contexts, read=read, rotate=agents.rotate, ask=agents.ask, echo=lines.append, clock=clock,
                      sleep=clock.sleep, **kw)  # fmt: skip
    return code, lines


def _targets(*clusters: str) -> list[Target]:
    return [Target(f"ctx-{c}", f"{c}/{n}", None) for c in clusters for n in NODES[c]]


# ---- arguments and node selection ----


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give the nodes to rotate: --node NAME (repeatable) or --all"),
        (["--all", "--node", "c1-n0"], "or --all, not both"),
        (["--all", "--timeout", "soon"], "'soon' is not a duration"),
        (["--all", "-o", "yaml"], "'yaml' is not one of 'text', 'json'"),
    ],
)
def test_argument_errors_are_usage_errors(argv: list[str], message: str) -> None:
    result = CliRunner().invoke(encryption, ["rotate", "--context", "ctx-c1", *argv])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_nodes_are_chosen_by_full_or_unambiguous_short_name() -> None:
    targets = _targets("c1", "c2", "c3")
    assert [t.node for t in select_targets(targets, [], all_nodes=True)] == [t.node for t in targets]
    chosen = select_targets(targets, ["c2/shared", "c1-n1", "c1/c1-n1", "c2-n0"], all_nodes=False)
    assert [t.node for t in chosen] == ["c1/c1-n1", "c2/c2-n0", "c2/shared"]  # targets' order, once each
    with pytest.raises(NodeSelectionError, match=r"--node shared is in several clusters \(c2/shared, c3/shared\)"):
        select_targets(targets, ["shared"], all_nodes=False)
    with pytest.raises(NodeSelectionError) as err:
        select_targets(targets, ["c1-n0", "c9-n0", "c1/c2-n0"], all_nodes=False)
    assert str(err.value).startswith("unknown node(s): c9-n0, c1/c2-n0; the nodes of the given context(s) are: ")
    assert "c1/c1-n0, c1/c1-n1, c2/c2-n0, c2/shared, c3/shared" in str(err.value)


def test_an_unknown_node_on_the_command_line_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rotate_mod, "read_cluster", lambda context, **kw: read(context))
    result = CliRunner().invoke(encryption, ["rotate", "--context", "ctx-c1", "--node", "c1-n7"])
    assert result.exit_code == 2
    assert "unknown node(s): c1-n7; the nodes of the given context(s) are: c1/c1-n0, c1/c1-n1" in result.output


# ---- the status check (pure) ----


def test_check_rotation() -> None:
    old, new = OLD["c1/c1-n0"], NEW["c1/c1-n0"]
    assert check_rotation(status(old, "preparing", True), old, new) == ("waiting", "preparing", "")
    assert check_rotation(status(new, "converging", True), old, new) == ("waiting", "converging", "")
    assert check_rotation(status(new, "idle", False), old, new) == ("done", "idle", "")
    assert check_rotation(status(old, "transition", True, **{"last-error": "wg set: boom"}), old, new) == (
        "waiting", "transition", "wg set: boom")  # fmt: skip
    state, _, why = check_rotation(status("other".ljust(43, "C") + "="), old, new)
    assert state == "failed" and "neither the old one nor the announced" in why
    assert check_rotation(status(None), old, new)[0] == "failed"
    assert check_rotation({"datapath": None}, old, new)[0] == "waiting"  # not programmed (yet)
    # an agent without the rotation object yet: decided on the key alone
    assert check_rotation({"datapath": {"encryption": {"public-key": new}}}, old, new) == ("done", "?", "")


# ---- the request and the wait ----


def test_rotating_two_nodes_at_once_waits_until_both_are_on_their_new_key() -> None:
    a, b = "c1/c1-n0", "c2/c2-n0"
    agents = Agents({
        a: [status(OLD[a], "preparing", True), status(OLD[a], "transition", True), status(NEW[a], "converging", True),
            status(NEW[a], "idle", False)],
        b: [status(OLD[b], "preparing", True), "exec failed: connection reset", status(OLD[b], "transition", True),
            status(OLD[b], "committing", True), status(NEW[b], "draining", True), status(NEW[b], "draining", True),
            status(NEW[b], "idle", False)],
    })  # fmt: skip
    clock = Clock()
    code, lines = run(agents, clock, nodes=["c1-n0", "c2/c2-n0"])
    assert code == 0, lines
    assert sorted(agents.rotated) == [a, b]
    assert lines[0] == f"{a}: rotating {OLD[a]} -> {NEW[a]} (phase preparing)"
    assert lines[1] == f"{b}: rotating {OLD[b]} -> {NEW[b]} (phase preparing)"
    assert f"{a}: rotated to {NEW[a]} in 3.0s" in lines
    assert f"{b}: rotated to {NEW[b]} in 6.0s" in lines
    assert lines[-1] == "OK: 2 node(s) rotated their WireGuard key"
    progress = [line for line in lines if "waiting for" in line]
    assert progress[0] == f"  [  0.0s] waiting for 2 node(s): {a} preparing, {b} preparing"
    assert f"  [  2.0s] waiting for 2 node(s): {a} converging, {b} transition" in progress
    stamps = [float(p.split("]")[0].strip(" [s")) for p in progress]
    assert all(later - earlier >= 2.0 for earlier, later in zip(stamps, stamps[1:], strict=False)), progress
    # done nodes are not asked again
    assert agents.asked.count(a) == 4 and agents.asked.count(b) == 7


def test_the_timeout_names_the_nodes_that_did_not_finish() -> None:
    a, b = "c1/c1-n0", "c1/c1-n1"
    agents = Agents(
        {
            a: [status(NEW[a], "idle")],
            b: [status(OLD[b], "preparing", True, **{"last-error": "peer c2/c2-n0: no handshake"})],
        }
    )
    clock = Clock()
    code, lines = run(agents, clock, contexts=["ctx-c1"], all_nodes=True, timeout=10.0)
    assert code == 1
    assert f"{a}: rotated to {NEW[a]} in 0.0s" in lines
    assert clock.now - 100.0 == pytest.approx(10.0)  # bounded by --timeout
    progress = [line for line in lines if "waiting for" in line]
    assert len(progress) == 5  # 0, 2, 4, 6, 8 s: at most one per 2 s
    assert progress[0] == f"  [  0.0s] waiting for 1 node(s): {b} preparing (peer c2/c2-n0: no handshake)"


def test_the_timeout_error_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    b = "c1/c1-n1"
    agents = Agents({b: [status(OLD[b], "transition", True)]})
    code, _ = run(agents, Clock(), contexts=["ctx-c1"], nodes=["c1-n1"], timeout=3.0)
    assert code == 1
    err = capsys.readouterr().err
    assert f"Error: 1 of 1 node(s) did not rotate: {b}: did not finish within 3s (phase transition)" in err


def test_a_node_that_refuses_is_reported_and_the_others_still_rotate(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = "c1/c1-n0", "c1/c1-n1"
    agents = Agents({a: [status(NEW[a])]}, refuse={b: "node c1-n1: WireGuard is not running on this node"})
    code, lines = run(agents, Clock(), contexts=["ctx-c1"], all_nodes=True)
    assert code == 1
    assert f"{b}: not rotated: node c1-n1: WireGuard is not running on this node" in lines
    assert f"{a}: rotated to {NEW[a]} in 0.0s" in lines
    assert b not in agents.asked
    assert f"{b}: node c1-n1: WireGuard is not running" in capsys.readouterr().err


def test_a_key_that_moves_elsewhere_fails_the_node() -> None:
    a = "c1/c1-n0"
    agents = Agents({a: [status(OLD[a], "preparing", True), status("x".ljust(43, "D") + "=")]})
    code, lines = run(agents, Clock(), contexts=["ctx-c1"], nodes=["c1-n0"])
    assert code == 1
    assert any(line.startswith(f"{a}: its key is now xDDD") for line in lines), lines


def test_no_wait_only_asks_for_the_rotations() -> None:
    agents = Agents({})
    code, lines = run(agents, Clock(), contexts=["ctx-c1"], all_nodes=True, wait=False)
    assert code == 0 and agents.asked == []
    assert lines[-1] == "OK: 2 rotation(s) started; follow them with `clustermesh encryption status`"


def test_json_output_is_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    a = "c1/c1-n0"
    agents = Agents({a: [status(OLD[a], "transition", True), status(NEW[a])]})
    code, lines = run(agents, Clock(), contexts=["ctx-c1"], nodes=["c1-n0"], output="json")
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"passed": True, "waited": True, "nodes": [{
        "node": a, "context": "ctx-c1", "pod": "kube-system/agent-c1-n0", "public-key": OLD[a],
        "next-public-key": NEW[a], "phase": "idle", "rotated": True, "seconds": 1.0, "error": None}]}  # fmt: skip


def test_a_node_without_a_running_agent_pod_is_not_asked() -> None:
    def read_down(context: str) -> ClusterObjects:
        c = read(context)
        pods = [dict(p, status={"phase": "Pending"}) if p["spec"]["nodeName"] == "c1-n1" else p for p in c.agent_pods]
        return ClusterObjects(c.context, c.cluster, c.nodes, agent_pods=pods)

    agents = Agents({"c1/c1-n0": [status(NEW["c1/c1-n0"])]})
    lines: list[str] = []
    code = run_rotate(["ctx-c1"], all_nodes=True, read=read_down, rotate=agents.rotate, ask=agents.ask,
                      echo=lines.append, clock=Clock(), sleep=lambda s: None)  # fmt: skip
    assert code == 1 and agents.rotated == ["c1/c1-n0"]
    assert "c1/c1-n1: not rotated: agent pod agent-c1-n1 is not running (phase Pending)" in lines


# ---- the command end to end, the pod exec replaced ----


def test_the_command_execs_the_agent_command_then_polls_the_status(monkeypatch: pytest.MonkeyPatch) -> None:
    execs: list[tuple[str, list[str]]] = []

    def fake_exec_json(configuration: Any, namespace: str, name: str, container: str, command: list[str],
                       timeout: float, *, what: str) -> ExecResult:  # fmt: skip
        execs.append((f"{namespace}/{name}/{container}", command))
        return ExecResult(doc={"node": "c1-n0", "public-key": OLD["c1/c1-n0"], "next-public-key": NEW["c1/c1-n0"],
                               "phase": "preparing"})  # fmt: skip

    def fake_status(configuration: Any, pod: Mapping[str, Any], timeout: float) -> AgentProbe:
        return AgentProbe(pod, status=status(NEW["c1/c1-n0"]))

    monkeypatch.setattr(rotate_mod, "read_cluster", lambda context, **kw: read(context))
    monkeypatch.setattr(rotate_mod, "context_configuration", lambda context, kubeconfig=None: object())
    monkeypatch.setattr(rotate_mod, "exec_json", fake_exec_json)
    monkeypatch.setattr(rotate_mod, "exec_agent_status", fake_status)
    monkeypatch.setattr(websocket, "setdefaulttimeout", lambda timeout: None)
    result = CliRunner().invoke(encryption, ["rotate", "--context", "ctx-c1", "--node", "c1-n0"])
    assert result.exit_code == 0, result.output
    assert execs == [("kube-system/agent-c1-n0/agent", rotate_command("c1-n0", 30.0))]
    assert execs[0][1][:4] == ["clustermesh", "agent", "encryption", "rotate"]
    assert "/c1-n0/agent.sock" in execs[0][1][5] and execs[0][1][6:] == ["--request-timeout", "25"]
    assert f"c1/c1-n0: rotating {OLD['c1/c1-n0']} -> {NEW['c1/c1-n0']}" in result.output
    assert "OK: 1 node(s) rotated their WireGuard key" in result.output


def test_an_unreadable_context_fails_before_rotating_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    from clustermesh_cli.enable.kube import KubeError

    def broken(context: str, **kw: Any) -> ClusterObjects:
        raise KubeError(f"the Kubernetes API of context {context} does not answer")

    monkeypatch.setattr(rotate_mod, "read_cluster", broken)
    result = CliRunner().invoke(encryption, ["rotate", "--context", "ctx-c1", "--all"])
    assert result.exit_code == 1
    assert "Error: the Kubernetes API of context ctx-c1 does not answer" in result.output


def test_help_teaches_what_rotation_does_and_how_to_use_it() -> None:
    result = CliRunner().invoke(encryption, ["rotate", "--help"], terminal_width=400)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for expected in ("make-before-break", "transition device", "no packet is lost", "Use it when",
                     "--wireguard-key-rotation-interval", "Several nodes may rotate at once",
                     "clustermesh encryption rotate --context lab-c1 --node c1-n0", "--all --timeout 5m",
                     "--wait / --no-wait", "--node NAME", "Exit status"):  # fmt: skip
        assert expected in text, expected
    assert "rotate" in CliRunner().invoke(encryption, ["--help"]).output
