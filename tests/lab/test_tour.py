"""Issue 9 item 7: `make demo` is the product tour. Run it as the README says (`make demo`, with a
lab name of its own so that it can run beside other labs), and check its exit status, its summary
and that it leaves nothing behind; it refuses a lab name in use without touching that lab; and an
interrupted tour still takes its lab down."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab.driver import CLI, PROJECT, LabDriver
from lab.net import nsutil
from lab.supervisor import control
from lab.supervisor.spec import state_dir
from lab.tour.runner import StepResult, render_summary

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

STEPS = ("lab up --no-mesh", "clustermesh enable c1", "clustermesh enable c2", "clustermesh connect",
         "clustermesh status --wait c1", "clustermesh status --wait c2", "echo workload", "by pod IP",
         "clustermesh encryption status", "clustermesh encryption audit --duration 5",
         "affinity local", "affinity remote", "drops c1's client", "lab down")


def _name() -> str:
    return "t" + secrets.token_hex(3)[:5]


def _env(name: str) -> dict[str, str]:
    return {**os.environ, "CLUSTERMESH_TOUR_NAME": name, "PYTHONUNBUFFERED": "1"}


def _gone(name: str) -> None:
    assert control.supervisor_pid(name) is None
    assert not state_dir(name).exists(), f"{state_dir(name)} left behind"
    assert nsutil.namespaces_with_prefix(name) == [], nsutil.namespaces_with_prefix(name)


def test_summary_table_lists_every_step() -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_summary([StepResult(1, "lab up", "ok", 5.2, "up [ok]"),
                                  StepResult(2, "enable", "FAILED", 1.0, "boom"),
                                  StepResult(3, "lab down", "skipped", 0.0)], title="t"))
    text = console.export_text()
    assert re.search(r"1 .*lab up .*ok .*5\.2s .*up \[ok\]", text), text  # details are not markup
    assert re.search(r"2 .*enable .*FAILED", text) and re.search(r"3 .*lab down .*skipped", text), text


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_make_demo_runs_the_tour_and_ends_with_its_summary() -> None:
    name = _name()
    try:
        out = subprocess.run(["make", "demo"], cwd=PROJECT, env=_env(name), capture_output=True, text=True,
                             timeout=400)
        _check_tour_output(name, out)
        _gone(name)  # before the safety net below
    finally:
        subprocess.run([*CLI, "lab", "down", "--name", name], cwd=PROJECT, capture_output=True, timeout=180)


def _check_tour_output(name: str, out: subprocess.CompletedProcess[str]) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    summary = text[text.index(f"clustermesh tour (lab '{name}')"):]
    rows = [line for line in summary.splitlines() if re.match(r"│\s+\d+ │", line)]
    assert len(rows) == len(STEPS), summary
    for row, step in zip(rows, STEPS, strict=True):
        assert step in row and "│ ok " in row, row
        assert re.search(r"\d+\.\ds", row), row  # each step's time
    assert f"tour passed: {len(STEPS)}/{len(STEPS)} steps ok" in summary
    # what the steps claim (their "ok" lines, unwrapped), from the commands' own output
    assert re.search(r"answered by c2/echo-\S+ on c2-n\d", text), text
    assert re.search(r"6/6 requests to \S+ answered by c1 \(", text) and re.search(r"6/6 .* answered by c2 \(", text)
    assert re.search(r"policy_denied ingress \d+ -> \d+ packets", text)
    # WireGuard: every node's peers in sync, and the audit passed with WireGuard on the wire
    assert re.search(r"4/4 node\(s\) reached, 4 with WireGuard, 12/12 peer\(s\) in sync", text), text
    assert re.search(r"\d+ WireGuard packets between nodes; PASS: no plaintext pod traffic", text), text
    assert '"cluster": "c2"' in text  # the echo server's own answer, as curl printed it


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_refuses_a_lab_name_in_use_and_leaves_that_lab_alone(tmp_path: Path) -> None:
    driver = LabDriver(_name(), tmp_path / "kubeconfig")
    try:
        driver.up(1, 1, "--no-mesh", timeout=120)
        out = subprocess.run([*CLI, "demo", "--name", driver.name], cwd=PROJECT, env=_env(driver.name),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"a lab named {driver.name!r} is up already" in out.stdout, out.stdout
        assert control.supervisor_pid(driver.name) is not None, "the tour must not touch a lab it did not build"
        assert driver.status()["ready"]
    finally:
        driver.down()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_interrupted_tour_still_takes_its_lab_down() -> None:
    name = _name()
    proc = subprocess.Popen([*CLI, "demo", "--name", name], cwd=PROJECT, env=_env(name), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        for line in proc.stdout:  # until the lab is up and the mesh being installed
            seen.append(line)
            if "step 2:" in line or time.monotonic() > deadline:
                break
        assert any("step 2:" in line for line in seen), "".join(seen)
        time.sleep(2)  # inside `clustermesh enable`
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=200)
        text = "".join(seen) + rest
        assert proc.returncode == 130, text[-4000:]
        assert re.search(r"│\s+2 │ clustermesh enable c1\s+│ interrupted", text), text[-4000:]
        assert re.search(r"│\s+\d+ │ lab down\s+│ ok ", text), text[-4000:]
        _gone(name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run([*CLI, "lab", "down", "--name", name], cwd=PROJECT, capture_output=True, timeout=180)
