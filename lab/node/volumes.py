"""Pod volumes as files on the host: what each volume holds (pure) and writing it to the pod directory.

Supported: ``secret`` and ``configMap`` (all keys or ``items``, ``defaultMode``/per-item ``mode``,
``optional``), ``projected`` (secret, configMap, downwardAPI, serviceAccountToken sources),
``downwardAPI``, ``emptyDir`` (a directory; ``medium: Memory`` is the same, the state directory is on
tmpfs) and ``hostPath`` (the host path itself, checked or created per ``type``). The service-account
volume the API server's admission would add is made here (:func:`service_account_files`): ``token``,
``ca.crt`` and ``namespace``. Secret files default to mode 0600, everything else to 0644. The files
of a volume are written with :func:`lab.node.atomicwriter.write_volume` (the kubelet's layout), and
the pod worker writes them again whenever what they should hold changes (a Secret or ConfigMap
updated, created or deleted, a label changed for the Downward API).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.node.podspec import ContainerConfigError, Obj, Refs, field_ref, meta, service_account

SECRET_MODE = 0o600
FILE_MODE = 0o644
TOKEN_LIFETIME = 10 * 365 * 24 * 3600


class VolumeError(ContainerConfigError):
    """A volume cannot be set up (the kubelet's ``FailedMount``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "ContainerCreating")


@dataclass(frozen=True)
class Files:
    """A volume made of files: relative path -> (content, mode)."""

    files: Mapping[str, tuple[bytes, int]]


@dataclass(frozen=True)
class EmptyDir:
    pass


@dataclass(frozen=True)
class HostPath:
    path: str
    type: str


Content = Files | EmptyDir | HostPath


def _mode(value: Any, default: int) -> int:
    try:
        return int(value) & 0o7777 if value is not None else default
    except (TypeError, ValueError):
        return default


def _keyed(data: Mapping[str, bytes] | None, src: Obj, *, what: str, name: str, default_mode: int
           ) -> dict[str, tuple[bytes, int]]:
    """Files of a secret or configMap source (whole object, or its ``items``)."""
    if data is None:
        if src.get("optional"):
            return {}
        raise VolumeError(f'{what} "{name}" not found')
    mode = _mode(src.get("defaultMode"), default_mode)
    items = src.get("items")
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    out = {}
    for item in items:
        key, path = str(item.get("key", "")), str(item.get("path", ""))
        if key not in data:
            if src.get("optional"):
                continue
            raise VolumeError(f'{what} "{name}": no key {key!r}')
        out[path] = (data[key], _mode(item.get("mode"), mode))
    return out


def service_account_token(pod: Obj, *, audience: str = "https://kubernetes.default.svc.cluster.local",
                          now: float | None = None) -> bytes:
    """A JWT-shaped token naming the pod's service account, issued at ``now`` (default: the current
    time). The API emulator does not check tokens, so it is unsigned (``alg: none``); it only has to
    look like one to clients."""
    issued = int(now if now is not None else time.time())
    md = meta(pod)
    ns = str(md.get("namespace") or "default")
    sa = service_account(pod)
    claims = {
        "aud": [audience], "iss": audience, "iat": issued, "nbf": issued, "exp": issued + TOKEN_LIFETIME,
        "sub": f"system:serviceaccount:{ns}:{sa}",
        "kubernetes.io": {"namespace": ns, "pod": {"name": md.get("name"), "uid": md.get("uid")},
                          "serviceaccount": {"name": sa}},
    }  # fmt: skip

    def b64(doc: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.".encode()


def service_account_files(pod: Obj, ca: bytes, *, issued: float | None = None) -> Files:
    """The files of the service-account volume at /var/run/secrets/kubernetes.io/serviceaccount
    (the token issued at ``issued``, default now)."""
    ns = str(meta(pod).get("namespace") or "default")
    return Files({"token": (service_account_token(pod, now=issued), FILE_MODE), "ca.crt": (ca, FILE_MODE),
                  "namespace": (ns.encode(), FILE_MODE)})


def _downward(items: list[Obj], pod: Obj, *, pod_ip: str, host_ip: str, default_mode: int
              ) -> dict[str, tuple[bytes, int]]:
    out = {}
    for item in items or []:
        ref = item.get("fieldRef")
        if not isinstance(ref, dict):
            raise VolumeError(f"downwardAPI item {item.get('path')!r}: only fieldRef is supported")
        value = field_ref(pod, str(ref.get("fieldPath", "")), pod_ip=pod_ip, host_ip=host_ip)
        out[str(item.get("path", ""))] = (value.encode(), _mode(item.get("mode"), default_mode))
    return out


def volume_content(volume: Obj, pod: Obj, refs: Refs, *, pod_ip: str, host_ip: str,
                   token_issued: float | None = None) -> Content:
    """What the pod volume ``volume`` holds; :class:`VolumeError` if it cannot be provided.
    ``token_issued`` is when projected service-account tokens are issued (default now): a fixed
    time keeps them, and so the volume, the same from one call to the next."""
    name = str(volume.get("name", ""))
    if isinstance(volume.get("secret"), dict):
        src = volume["secret"]
        sname = str(src.get("secretName", ""))
        return Files(_keyed(refs.get(("secret", sname)), src, what="secret", name=sname, default_mode=SECRET_MODE))
    if isinstance(volume.get("configMap"), dict):
        src = volume["configMap"]
        cname = str(src.get("name", ""))
        return Files(_keyed(refs.get(("configmap", cname)), src, what="configmap", name=cname,
                            default_mode=FILE_MODE))
    if "emptyDir" in volume:
        return EmptyDir()
    if isinstance(volume.get("hostPath"), dict):
        hp = volume["hostPath"]
        return HostPath(str(hp.get("path", "")), str(hp.get("type") or ""))
    if isinstance(volume.get("downwardAPI"), dict):
        src = volume["downwardAPI"]
        return Files(_downward(src.get("items") or [], pod, pod_ip=pod_ip, host_ip=host_ip,
                               default_mode=_mode(src.get("defaultMode"), FILE_MODE)))
    if isinstance(volume.get("projected"), dict):
        proj = volume["projected"]
        default = _mode(proj.get("defaultMode"), FILE_MODE)
        files: dict[str, tuple[bytes, int]] = {}
        for src in proj.get("sources") or []:
            if isinstance(src.get("secret"), dict):
                s = src["secret"]
                files.update(_keyed(refs.get(("secret", str(s.get("name", "")))), {"defaultMode": default, **s},
                                    what="secret", name=str(s.get("name", "")), default_mode=default))
            elif isinstance(src.get("configMap"), dict):
                s = src["configMap"]
                files.update(_keyed(refs.get(("configmap", str(s.get("name", "")))), {"defaultMode": default, **s},
                                    what="configmap", name=str(s.get("name", "")), default_mode=default))
            elif isinstance(src.get("downwardAPI"), dict):
                files.update(_downward(src["downwardAPI"].get("items") or [], pod, pod_ip=pod_ip, host_ip=host_ip,
                                       default_mode=default))
            elif isinstance(src.get("serviceAccountToken"), dict):
                s = src["serviceAccountToken"]
                aud = str(s.get("audience") or "") or "https://kubernetes.default.svc.cluster.local"
                token = service_account_token(pod, audience=aud, now=token_issued)
                files[str(s.get("path") or "token")] = (token, default)
            else:
                raise VolumeError(f"volume {name!r}: unsupported projected source {sorted(src)}")
        return Files(files)
    kinds = sorted(k for k in volume if k != "name")
    raise VolumeError(f"lab: volume {name!r} of type {', '.join(kinds) or '(none)'} is not supported "
                      "(supported: secret, configMap, projected, downwardAPI, emptyDir, hostPath)")


# ----- I/O -----

_HOSTPATH_CHECKS = {
    "Directory": (stat.S_ISDIR, "a directory"),
    "File": (stat.S_ISREG, "a file"),
    "Socket": (stat.S_ISSOCK, "a socket"),
    "CharDevice": (stat.S_ISCHR, "a character device"),
    "BlockDevice": (stat.S_ISBLK, "a block device"),
}


def prepare_host_path(hp: HostPath) -> bool:
    """Check or create a hostPath per its type; True if it is a file (mounted onto a file)."""
    path = Path(hp.path)
    if not path.is_absolute():
        raise VolumeError(f"hostPath {hp.path!r} must be absolute")
    if hp.type == "DirectoryOrCreate":
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif hp.type == "FileOrCreate":
        if not path.exists():
            if not path.parent.is_dir():
                raise VolumeError(f"hostPath {hp.path}: the parent directory does not exist")
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    elif hp.type in _HOSTPATH_CHECKS:
        check, what = _HOSTPATH_CHECKS[hp.type]
        try:
            mode = path.stat().st_mode
        except OSError:
            raise VolumeError(f"hostPath {hp.path} does not exist (type {hp.type})") from None
        if not check(mode):
            raise VolumeError(f"hostPath {hp.path} is not {what} (type {hp.type})")
    elif hp.type:
        raise VolumeError(f"hostPath {hp.path}: unknown type {hp.type!r}")
    return path.is_file()
