"""``clustermesh wire encode|decode`` driven as a real subprocess."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.shared import REFERENCE_DOC

PROJECT = Path(__file__).resolve().parents[2]
REFERENCE = REFERENCE_DOC


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "clustermesh_cli.main", *args],
        input=stdin,
        capture_output=True,
        cwd=PROJECT,
        timeout=60,
        check=False,
    )


def reference_node_sample() -> bytes:
    """The node JSON sample of reference §1.6, wrapped across lines in the doc, re-joined."""
    text = REFERENCE.read_text(encoding="utf-8")
    start = text.index("### 1.6 ")
    block = re.search(r"```json\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None
    return "".join(line.strip() for line in block.group(1).splitlines()).encode()


def shuffle(value: Any, rng: random.Random) -> Any:
    """Shuffle the key order of every object, recursively (list order is data, kept)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffle(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffle(v, rng) for v in value]
    return value


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_pretty_node_encodes_to_cilium_bytes(seed: int) -> None:
    sample = reference_node_sample()
    rng = random.Random(seed)
    shuffled = shuffle(json.loads(sample), rng)
    indents: list[int | str] = [2, 4, "\t"]
    indent = rng.choice(indents)
    pretty = json.dumps(shuffled, indent=indent).encode()
    assert pretty != sample
    result = run("wire", "encode", "--kind", "node", stdin=pretty)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == sample
    assert result.stderr == b""


def test_decode_pretty_prints_like_kvstore_list() -> None:
    sample = reference_node_sample()
    result = run("wire", "decode", "--key", "cilium/state/nodes/v1/cluster3/test-node-1", stdin=sample)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b'{\n  "Name": "test-node-1",\n  "Cluster": "cluster3",\n')
    assert result.stdout.endswith(b'  "BootID": "570d3fd1-..."\n}\n')


def test_decode_checks_the_key() -> None:
    result = run(
        "wire", "decode", "--key", "cilium/state/nodes/v1/cluster3/other", stdin=reference_node_sample()
    )
    assert result.returncode == 1
    assert b"does not match its key" in result.stderr
    assert b"Traceback" not in result.stderr


def test_identity_from_list_and_from_string() -> None:
    labels = (
        b'["k8s:io.kubernetes.pod.namespace=bar", "k8s:app=baz", "k8s:io.cilium.k8s.policy.cluster=cluster3"]'
    )
    expected = b"k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;"
    result = run("wire", "encode", "--kind", "identity", stdin=labels)
    assert (result.returncode, result.stdout) == (0, expected), result.stderr
    result = run("wire", "encode", "--kind", "identity", stdin=expected + b"\n")
    assert (result.returncode, result.stdout) == (0, expected), result.stderr


def test_encode_cluster_config_and_ip() -> None:
    result = run(
        "wire",
        "encode",
        "-k",
        "clusterconfig",
        stdin=b'{"capabilities": {"maxConnectedClusters": 255}, "id": 3}',
    )
    assert result.stdout == b'{"id":3,"capabilities":{"maxConnectedClusters":255}}'
    result = run("wire", "encode", "-k", "ip", stdin=b'{"ID": 5, "IP": "fd00:0::1"}')
    assert result.stdout == b'{"IP":"fd00::1","HostIP":"","ID":5,"Key":0,"Metadata":""}'


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (
            ("--kind", "node"),
            b'{"IPAddresses":[{"IP":"1.1.1.1"},{"IP":"fe80::1%eth0"}]}',
            b"IPAddresses[1].IP",
        ),
        (("--kind", "node"), b'{"ClusterID": -1}', b"ClusterID"),
        (("--kind", "node"), b"{not json", b"malformed JSON"),
        (("--kind", "node"), b"", b"no input"),
        (("--kind", "ip"), b'{"IP":"10.0.0.1","Mask":"//8="}', b"Mask"),
        (("--kind", "identity"), b"k8s:app=foo", b"must end with ';'"),
        (("--kind", "identity"), b'["k8s:app=foo", 3]', b"list of label strings"),
    ],
)
def test_invalid_input_exits_1_with_reason(args: tuple[str, ...], stdin: bytes, needle: bytes) -> None:
    result = run("wire", "encode", *args, stdin=stdin)
    assert result.returncode == 1
    assert result.stdout == b""
    assert needle in result.stderr
    assert result.stderr.startswith(b"error: ")
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("wire", "encode"),
        ("wire", "encode", "--kind", "bogus"),
        ("wire", "decode"),
        ("wire", "nope"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = run(*args, stdin=b"{}")
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr


def test_decode_with_unknown_key_is_invalid_data() -> None:
    result = run("wire", "decode", "--key", "foo/bar", stdin=b"{}")
    assert result.returncode == 1
    assert b"foo/bar" in result.stderr


def test_help_teaches() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert b"wire" in result.stdout
    result = run("wire", "--help")
    assert b"cilium/state/ip/v1/default/<ip>" in result.stdout
    result = run("wire", "encode", "-h")
    assert b"no trailing newline" in result.stdout
