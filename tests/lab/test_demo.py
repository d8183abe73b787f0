"""`clustermesh demo kvstore` (the foundation demo, formerly `make demo`): run it and check what it claims."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_and_shows_convergence() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clustermesh_cli.main", "demo", "kvstore"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "reader connected as etcd user remote-cluster2" in out
    assert "synced all four prefixes after their canaries appeared" in out
    assert "refused by etcd" in out and "denied for user 'remote-cluster2'" in out
    events_line = next(line for line in out.splitlines() if "events after the outage" in line)
    # Only what changed during the outage is re-announced: one delete, one add, one service update.
    assert events_line.count("upsert") == 2 and events_line.count("delete") == 1, events_line
    assert "bad remote entries rejected: 2" in out
    assert '{"Name":"cluster1-node-0","Cluster":"cluster1","IPAddresses":[' in out
