"""The Containerfile (it cannot be built here: no container engine): it parses as known instructions,
names the image the manifests use, copies the whole project, and installs every command the
rendered containers run."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from clustermesh_cli.install import InstallOptions, render_manifests
from clustermesh_cli.install.manifests import etcd_init_script
from clustermesh_cli.install.options import IMAGE_REPOSITORY, default_image

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "Containerfile"
KNOWN = {"FROM", "ARG", "RUN", "COPY", "WORKDIR", "ENV", "LABEL", "USER"}
BASE_IMAGE = "python:3.11-slim-bookworm"
#: Commands the rendered containers start that do not come from the project, and what provides them.
PROVIDED_BY = {"etcd": ("apt", "etcd-server"), "/bin/sh": ("base", BASE_IMAGE)}
SHELL_BUILTINS_AND_COREUTILS = {"set", "trap", "kill", "wait", "until", "do", "done", "if", "then", "fi", "echo",
                                "exit", "sleep", "[", "!"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        keyword, _, args = " ".join(p.strip() for p in pending).partition(" ")
        out.append(Instruction(keyword, args.strip(), start))
        pending = []
    assert not pending, "the Containerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    assert CONTAINERFILE.exists(), "Containerfile is missing at the repository root"
    return parse(CONTAINERFILE.read_text())


def apt_packages(instructions: list[Instruction]) -> set[str]:
    packages: set[str] = set()
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        lexer = shlex.shlex(ins.args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, "&&"]:
            if word in ("&&", "||", ";", "|"):
                if command[:2] == ["apt-get", "install"]:
                    packages |= {w for w in command[2:] if not w.startswith("-")}
                command = []
            else:
                command.append(word)
    return packages


def test_only_known_instructions_and_no_entrypoint(instructions: list[Instruction]) -> None:
    unknown = [(i.line, i.keyword) for i in instructions if i.keyword not in KNOWN]
    assert not unknown, f"unknown or unwanted instructions (the manifests give every command): {unknown}"
    assert instructions[0].keyword == "FROM" and instructions[0].args == BASE_IMAGE
    assert sum(i.keyword == "FROM" for i in instructions) == 1


def test_names_the_image_the_manifests_use() -> None:
    text = CONTAINERFILE.read_text()
    assert f"{IMAGE_REPOSITORY}:<version" in text
    tags = set(re.findall(re.escape(IMAGE_REPOSITORY) + r":([0-9][\w.+-]*)", text))
    assert tags == {default_image().rsplit(":", 1)[1]}, f"the build example tags {tags}; the manifests use " \
        f"{default_image()}"
    for o in render_manifests(InstallOptions(cluster_name="c1", cluster_id=1)):
        for key in ("Deployment", "DaemonSet"):
            if o["kind"] == key:
                spec = o["spec"]["template"]["spec"]
                for c in [*spec.get("initContainers", []), *spec["containers"]]:
                    assert c["image"] == default_image()


def test_copies_and_installs_the_whole_project(instructions: list[Instruction]) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied: set[str] = set()
    for ins in instructions:
        if ins.keyword == "COPY":
            *sources, _dest = shlex.split(ins.args)
            for src in sources:
                assert (REPO / src).exists(), f"line {ins.line}: COPY {src}: no such file in the repository"
                copied.add(src.rstrip("/"))
    assert packages <= copied, f"packages not copied into the image: {sorted(packages - copied)}"
    assert {"pyproject.toml", "README.md"} <= copied
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "pip install --no-cache-dir /src" in runs
    assert "/bpf/c" in runs, "bpf/c (the datapath's C sources) is not package data: the image must copy it"


def _commands() -> set[str]:
    commands: set[str] = set()
    variants = [InstallOptions(cluster_name="c1", cluster_id=1),
                InstallOptions(cluster_name="c1", cluster_id=1, source="kubernetes", routing_mode="native")]
    for options in variants:
        for o in render_manifests(options):
            if o["kind"] in ("Deployment", "DaemonSet"):
                spec = o["spec"]["template"]["spec"]
                commands |= {c["command"][0] for c in [*spec.get("initContainers", []), *spec["containers"]]}
        # the etcd-init script's own commands
        for line in etcd_init_script(options).replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and "=" not in words[0]:
                commands.add(words[1] if words[0] in ("until", "if") and len(words) > 1 else words[0])
    return commands - SHELL_BUILTINS_AND_COREUTILS


def test_every_command_of_the_manifests_is_installed(instructions: list[Instruction]) -> None:
    scripts = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
    packages = apt_packages(instructions)
    for command in sorted(_commands()):
        if command in scripts:
            continue  # installed by pip install of the project (checked above)
        assert command in PROVIDED_BY, f"{command!r} is run by the manifests but nothing provides it in the image"
        source, what = PROVIDED_BY[command]
        if source == "apt":
            assert what in packages, f"{command!r} needs the Debian package {what} in the Containerfile"
        else:
            assert what == BASE_IMAGE
    assert "python3-bpfcc" in packages, "the agent runs --datapath bpf, which needs bcc"


@pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("etcd") is None, reason="needs dpkg and etcd")
def test_the_debian_package_named_for_etcd_provides_it() -> None:
    """On this Debian 12 machine, the package the Containerfile installs for ``etcd`` really holds it."""
    path = str(Path(shutil.which("etcd") or "").resolve())
    owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, timeout=30)
    assert owner.returncode == 0, owner.stderr
    assert owner.stdout.split(":", 1)[0] == PROVIDED_BY["etcd"][1]
