#!/usr/bin/env python3
"""Regenerate the etcd v3 gRPC stubs in ``meshcore/kvstore/etcdpb``.

Source: Debian's ``golang-etcd-server-dev`` (etcd 3.4.23), files
``etcdserver/etcdserverpb/rpc.proto``, ``mvcc/mvccpb/kv.proto`` and ``auth/authpb/auth.proto``
under ``/usr/share/gocode/src/go.etcd.io/etcd``.

The protos are copied to a temporary tree, stripped of their gogoproto options/imports and of the
``google.api.http`` annotations (gRPC-gateway only; neither is needed on the wire), and their
imports are rewritten to ``meshcore/kvstore/etcdpb/*.proto`` so that the generated modules import
each other absolutely as ``meshcore.kvstore.etcdpb.*``. The proto package names (``etcdserverpb``,
``mvccpb``, ``authpb``) are kept: they are part of the gRPC method paths etcd serves.

Run from anywhere with the project's venv::

    .venv/bin/python scripts/gen_etcd_protos.py [--etcd-src DIR]

Idempotent: the output directory's generated files are replaced on every run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ETCD_VERSION = "3.4.23"
DEFAULT_SRC = Path("/usr/share/gocode/src/go.etcd.io/etcd")
REPO = Path(__file__).resolve().parent.parent
PKG_DIR = "meshcore/kvstore/etcdpb"
OUT_DIR = REPO / PKG_DIR

# etcd source path -> file name inside the package.
PROTOS = {
    "mvcc/mvccpb/kv.proto": "kv.proto",
    "auth/authpb/auth.proto": "auth.proto",
    "etcdserver/etcdserverpb/rpc.proto": "rpc.proto",
}
# Import paths as written in rpc.proto -> our path.
IMPORT_REWRITES = {
    "etcd/mvcc/mvccpb/kv.proto": f"{PKG_DIR}/kv.proto",
    "etcd/auth/authpb/auth.proto": f"{PKG_DIR}/auth.proto",
}

INIT_TEXT = f'''"""Generated etcd v3 gRPC stubs (etcd {ETCD_VERSION}). Do not edit.

Regenerate with ``.venv/bin/python scripts/gen_etcd_protos.py``; see that script for how the
upstream protos are adapted.
"""
'''


def strip_proto(text: str) -> str:
    """Remove gogoproto and google.api annotations and rewrite imports to our package."""
    text = re.sub(r'^import\s+"gogoproto/gogo\.proto";\s*\n', "", text, flags=re.M)
    text = re.sub(
        r'^(// for grpc-gateway\s*\n)?import\s+"google/api/annotations\.proto";\s*\n', "", text, flags=re.M
    )
    text = re.sub(r"^option\s+\(gogoproto\.[^;]*;\s*\n", "", text, flags=re.M)
    # Field options such as [(gogoproto.nullable) = false] (none in 3.4.23, kept for safety).
    text = re.sub(r"\s*\[\s*\(gogoproto\.[^\]]*\]", "", text)
    text = _strip_http_options(text)
    for old, new in IMPORT_REWRITES.items():
        text = text.replace(f'import "{old}";', f'import "{new}";')
    if "gogoproto" in text or "google.api" in text:
        raise SystemExit("unstripped gogoproto/google.api annotation left in proto; update the script")
    return text


def _strip_http_options(text: str) -> str:
    """Drop every ``option (google.api.http) = { ... };`` block (braces may nest)."""
    out: list[str] = []
    i = 0
    marker = re.compile(r"option\s*\(google\.api\.http\)\s*=\s*\{")
    while True:
        m = marker.search(text, i)
        if m is None:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        depth = 1
        j = m.end()
        while depth:
            if j >= len(text):
                raise SystemExit("unbalanced google.api.http option block")
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        end = text.index(";", j)
        i = end + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd-src", type=Path, default=DEFAULT_SRC)
    args = parser.parse_args()
    src: Path = args.etcd_src
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        pkg = tmp_root / PKG_DIR
        pkg.mkdir(parents=True)
        for rel, name in PROTOS.items():
            path = src / rel
            if not path.is_file():
                raise SystemExit(f"{path} not found: install Debian's golang-etcd-server-dev")
            (pkg / name).write_text(strip_proto(path.read_text()))
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for old in OUT_DIR.glob("*_pb2*.py*"):
            old.unlink()
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{tmp_root}",
            f"--python_out={REPO}",
            f"--pyi_out={REPO}",
            f"--grpc_python_out={REPO}",
            *(f"{PKG_DIR}/{name}" for name in PROTOS.values()),
        ]
        subprocess.run(cmd, check=True)
    # kv.proto and auth.proto define no services: their *_pb2_grpc.py would be empty.
    for name in ("kv_pb2_grpc.py", "auth_pb2_grpc.py"):
        (OUT_DIR / name).unlink(missing_ok=True)
    (OUT_DIR / "__init__.py").write_text(INIT_TEXT)
    print(f"generated etcd {ETCD_VERSION} stubs in {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
