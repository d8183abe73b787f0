"""``clustermesh-agent`` flag errors: clear messages and exit status 2, before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main

PROJECT = Path(__file__).resolve().parents[2]


def invoke(tmp_path: Path, *args: str) -> tuple[int, str]:
    config_dir = tmp_path / "clustermesh"
    config_dir.mkdir(exist_ok=True)
    base = ["--node-name", "n1", "--clustermesh-config", str(config_dir), "--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(main, [*base, *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cluster-name", "c1", "--cluster-id", "1"], "--datapath bpf needs --kvstore-config"),
        (["--cluster-name", "c1", "--cluster-id", "0", "--datapath", "none"], "cluster ID 0 is reserved"),
        (["--cluster-name", "c1", "--cluster-id", "256", "--datapath", "none"], "out of range 1..255"),
        (["--cluster-name", "c1", "--cluster-id", "300", "--max-connected-clusters", "511", "--datapath", "none",
          "--max-connected-clusters", "512"], "max-connected-clusters must be 255 or 511"),
        (["--cluster-name", "C1", "--cluster-id", "1", "--datapath", "none"], "lowercase alphanumerics"),
        (["--cluster-name", "default", "--cluster-id", "1", "--datapath", "none"], "'default' is not allowed"),
        (["--cluster-name", "x" * 33, "--cluster-id", "1", "--datapath", "none"], "longer than 32"),
        (["--cluster-name", "c1", "--cluster-id", "1", "--datapath", "none", "--clustermesh-sync-timeout", "0"],
         "--clustermesh-sync-timeout must be a positive"),
        (["--cluster-name", "c1", "--cluster-id", "1", "--datapath", "none", "--metrics-port", "70000"],
         "--metrics-port must be in 0..65535"),
        (["--cluster-name", "c1", "--cluster-id", "1", "--datapath", "gpu"], "'gpu' is not one of"),
        (["--cluster-id", "1", "--datapath", "none"], "Missing option '--cluster-name'"),
    ],
)
def test_flag_errors_exit_2_with_a_clear_message(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = invoke(tmp_path, *args)
    assert code == 2, output
    assert message in " ".join(output.split()), output


def test_bpf_datapath_needs_the_local_kvstore(tmp_path: Path) -> None:
    code, output = invoke(tmp_path, "--cluster-name", "c1", "--cluster-id", "1", "--datapath", "bpf")
    assert code == 2
    flat = " ".join(output.split())
    assert "--kvstore-config" in flat and "--datapath none" in flat


def test_missing_config_dir_and_bad_kvstore_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--cluster-name", "c1", "--cluster-id", "1", "--datapath", "none",
                                       "--clustermesh-config", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a directory" in result.output
    bad = tmp_path / "etcd.yaml"
    bad.write_text("endpoints: []\n")
    code, output = invoke(tmp_path, "--cluster-name", "c1", "--cluster-id", "1", "--datapath", "none",
                          "--kvstore-config", str(bad))
    assert code == 2 and "endpoints" in output


def test_installed_script_and_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "--help"], capture_output=True, cwd=PROJECT,
                          timeout=30, check=False)
    assert proc.returncode == 0
    for flag in (b"--cluster-name", b"--clustermesh-config", b"--agent-socket", b"--datapath",
                 b"--clustermesh-sync-timeout", b"--heartbeat-timeout", b"--metrics-port", b"--kvstore-config"):
        assert flag in proc.stdout
