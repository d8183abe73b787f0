"""What a pod's spec asks of the node, read from the API's JSON (pure: no I/O).

Defaults are the API server's (restartPolicy Always, 30 s grace, probe timings), since the lab's API
emulator stores pods as given. Environment variables follow the kubelet: ``envFrom`` first, then
``env`` in order with ``$(VAR)`` references expanded against what came before; ``command`` and
``args`` are expanded the same way. Secrets and ConfigMaps come in as already fetched data
(:data:`Refs`), so everything here is a function of its arguments.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshcore.errors import MeshError

Obj = dict[str, Any]
#: ``("secret" | "configmap", name) -> data`` (values decoded), None when the object does not exist.
Refs = Mapping[tuple[str, str], Mapping[str, bytes] | None]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_VOLUME = "kube-api-access-lab"
DEFAULT_GRACE = 30
MIN_GRACE = 2
NODE_CPU = 2
NODE_MAX_PODS = 110

_VAR_RE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
_FIELD_MAP_RE = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_QUANTITY_RE = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIXES = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


class ContainerConfigError(MeshError):
    """A container cannot be started as specified (the kubelet's ``CreateContainerConfigError``)."""

    def __init__(self, message: str, reason: str = "CreateContainerConfigError") -> None:
        super().__init__(message)
        self.reason = reason


# ----- pod-level facts -----

def meta(pod: Obj) -> Obj:
    md = pod.get("metadata")
    return md if isinstance(md, dict) else {}


def spec(pod: Obj) -> Obj:
    s = pod.get("spec")
    return s if isinstance(s, dict) else {}


def restart_policy(pod: Obj) -> str:
    policy = spec(pod).get("restartPolicy") or "Always"
    return policy if policy in ("Always", "OnFailure", "Never") else "Always"


def host_network(pod: Obj) -> bool:
    return bool(spec(pod).get("hostNetwork"))


def service_account(pod: Obj) -> str:
    s = spec(pod)
    return str(s.get("serviceAccountName") or s.get("serviceAccount") or "default")


def grace_seconds(pod: Obj, *, cap: int) -> int:
    """Seconds between SIGTERM and SIGKILL: the deletion's grace period if one was set, else the
    pod's ``terminationGracePeriodSeconds`` (default 30), at least 2 (the kubelet's minimum, so a
    forced deletion still lets processes see SIGTERM) and at most ``cap``."""
    value = meta(pod).get("deletionGracePeriodSeconds")
    if value is None:
        value = spec(pod).get("terminationGracePeriodSeconds")
    if value is None:
        value = DEFAULT_GRACE
    try:
        return max(MIN_GRACE, min(int(value), cap))
    except (TypeError, ValueError):
        return min(DEFAULT_GRACE, cap)


def containers(pod: Obj, *, init: bool = False) -> list[Obj]:
    items = spec(pod).get("initContainers" if init else "containers") or []
    return [c for c in items if isinstance(c, dict) and c.get("name")]


def pod_hostname(pod: Obj, node_name: str) -> str:
    """What ``hostname`` says in the pod: ``spec.hostname`` or the pod name; the node's name on the
    host network."""
    if host_network(pod):
        return node_name
    return str(spec(pod).get("hostname") or meta(pod).get("name") or "pod")[:63]


def wants_service_account(pod: Obj) -> bool:
    return spec(pod).get("automountServiceAccountToken") is not False


def mounts_service_account(container: Obj) -> bool:
    return any(str(m.get("mountPath", "")).rstrip("/") in (SA_MOUNT_PATH, "/run/secrets/kubernetes.io/serviceaccount")
               for m in container.get("volumeMounts") or [] if isinstance(m, dict))


# ----- the objects a pod reads -----

def referenced_objects(pod: Obj) -> set[tuple[str, str]]:
    """Every ``("secret"|"configmap", name)`` the pod's volumes and environments read."""
    out: set[tuple[str, str]] = set()
    for vol in spec(pod).get("volumes") or []:
        if not isinstance(vol, dict):
            continue
        if isinstance(vol.get("secret"), dict):
            out.add(("secret", str(vol["secret"].get("secretName", ""))))
        if isinstance(vol.get("configMap"), dict):
            out.add(("configmap", str(vol["configMap"].get("name", ""))))
        for src in (vol.get("projected") or {}).get("sources") or []:
            if isinstance(src.get("secret"), dict):
                out.add(("secret", str(src["secret"].get("name", ""))))
            if isinstance(src.get("configMap"), dict):
                out.add(("configmap", str(src["configMap"].get("name", ""))))
    for c in [*containers(pod, init=True), *containers(pod)]:
        for ef in c.get("envFrom") or []:
            if isinstance(ef.get("secretRef"), dict):
                out.add(("secret", str(ef["secretRef"].get("name", ""))))
            if isinstance(ef.get("configMapRef"), dict):
                out.add(("configmap", str(ef["configMapRef"].get("name", ""))))
        for e in c.get("env") or []:
            vf = e.get("valueFrom") if isinstance(e, dict) else None
            if isinstance(vf, dict):
                if isinstance(vf.get("secretKeyRef"), dict):
                    out.add(("secret", str(vf["secretKeyRef"].get("name", ""))))
                if isinstance(vf.get("configMapKeyRef"), dict):
                    out.add(("configmap", str(vf["configMapKeyRef"].get("name", ""))))
    return {r for r in out if r[1]}


def object_data(kind: str, obj: Obj) -> dict[str, bytes]:
    """The decoded key/value data of a Secret (``data``, base64) or ConfigMap (``data`` + ``binaryData``)."""
    out: dict[str, bytes] = {}
    if kind == "secret":
        for k, v in (obj.get("data") or {}).items():
            out[str(k)] = base64.b64decode(str(v or ""))
        for k, v in (obj.get("stringData") or {}).items():
            out[str(k)] = str(v).encode()
        return out
    for k, v in (obj.get("data") or {}).items():
        out[str(k)] = str(v if v is not None else "").encode()
    for k, v in (obj.get("binaryData") or {}).items():
        out[str(k)] = base64.b64decode(str(v or ""))
    return out


def _ref_data(refs: Refs, kind: str, name: str) -> Mapping[str, bytes] | None:
    return refs.get((kind, name))


# ----- the Downward API -----

def field_ref(pod: Obj, path: str, *, pod_ip: str, host_ip: str) -> str:
    """The value of a ``fieldRef.fieldPath``; :class:`ContainerConfigError` for unsupported paths."""
    md, s = meta(pod), spec(pod)
    simple = {
        "metadata.name": md.get("name"),
        "metadata.namespace": md.get("namespace") or "default",
        "metadata.uid": md.get("uid"),
        "spec.nodeName": s.get("nodeName"),
        "spec.serviceAccountName": service_account(pod),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = md.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    m = _FIELD_MAP_RE.match(path)
    if m:
        return str((md.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldRef.fieldPath {path!r}")


def parse_quantity(value: str) -> float:
    """A Kubernetes quantity (``500m``, ``128Mi``, ``2``) as a number."""
    m = _QUANTITY_RE.match(str(value).strip())
    if not m or m.group(2) not in _SUFFIXES:
        raise ContainerConfigError(f"invalid quantity {value!r}")
    return float(m.group(1)) * _SUFFIXES[m.group(2)]


def resource_field_ref(container: Obj, ref: Obj, *, node_memory: int) -> str:
    """``resourceFieldRef`` (``limits.cpu``, ``requests.memory``...): the container's value, or the
    node's capacity when unset, like the kubelet; cpu is rounded up to whole cores (divisor 1)."""
    resource = str(ref.get("resource", ""))
    kind, _, what = resource.partition(".")
    if kind not in ("limits", "requests") or what not in ("cpu", "memory", "ephemeral-storage"):
        raise ContainerConfigError(f"unsupported resourceFieldRef.resource {resource!r}")
    raw = ((container.get("resources") or {}).get(kind) or {}).get(what)
    if raw is None and kind == "requests":
        raw = ((container.get("resources") or {}).get("limits") or {}).get(what)
    default = {"cpu": NODE_CPU, "memory": node_memory, "ephemeral-storage": node_memory}[what]
    amount = parse_quantity(str(raw)) if raw is not None else float(default if kind == "limits" else 0)
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    return str(math.ceil(amount / divisor)) if divisor else "0"


# ----- environment -----

def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known names are replaced, unknown ones kept, ``$$`` -> ``$``."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_RE.sub(sub, text)


def _key_ref(refs: Refs, kind: str, ref: Obj, var: str) -> str | None:
    name, key = str(ref.get("name", "")), str(ref.get("key", ""))
    optional = bool(ref.get("optional"))
    data = _ref_data(refs, kind, name)
    label = "secret" if kind == "secret" else "configmap"
    if data is None:
        if optional:
            return None
        raise ContainerConfigError(f'{label} "{name}" not found (env {var})')
    if key not in data:
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {key} in {label} {name} (env {var})")
    return data[key].decode(errors="replace")


def container_env(pod: Obj, container: Obj, *, base: Mapping[str, str], refs: Refs, pod_ip: str, host_ip: str,
                  node_memory: int) -> dict[str, str]:
    """The environment of ``container``: ``base`` (PATH, service variables...), then ``envFrom``,
    then ``env``."""
    env = dict(base)
    for ef in container.get("envFrom") or []:
        prefix = str(ef.get("prefix") or "")
        for kind, field in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = ef.get(field)
            if not isinstance(ref, dict):
                continue
            data = _ref_data(refs, kind, str(ref.get("name", "")))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind if kind == "secret" else "configmap"} "{ref.get("name")}" '
                                           "not found (envFrom)")
            for k, v in data.items():
                env[prefix + k] = v.decode(errors="replace")
    for e in container.get("env") or []:
        if not isinstance(e, dict) or not e.get("name"):
            continue
        name = str(e["name"])
        vf = e.get("valueFrom")
        if not isinstance(vf, dict):
            env[name] = expand(str(e.get("value") or ""), env)
            continue
        value: str | None
        if isinstance(vf.get("fieldRef"), dict):
            value = field_ref(pod, str(vf["fieldRef"].get("fieldPath", "")), pod_ip=pod_ip, host_ip=host_ip)
        elif isinstance(vf.get("secretKeyRef"), dict):
            value = _key_ref(refs, "secret", vf["secretKeyRef"], name)
        elif isinstance(vf.get("configMapKeyRef"), dict):
            value = _key_ref(refs, "configmap", vf["configMapKeyRef"], name)
        elif isinstance(vf.get("resourceFieldRef"), dict):
            value = resource_field_ref(container, vf["resourceFieldRef"], node_memory=node_memory)
        else:
            raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(vf)}")
        if value is not None:
            env[name] = value
    return env


def container_argv(container: Obj, env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; the lab never runs images, so a container
    without a command cannot start."""
    command = [str(a) for a in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if not command:
        raise ContainerConfigError("lab: container has no command (images are not run)", "CreateContainerError")
    return [expand(a, env) for a in [*command, *args]]


# ----- mounts -----

@dataclass(frozen=True)
class Mount:
    """One bind mount for a container: host ``source`` onto ``target``."""

    source: str
    target: str
    read_only: bool
    is_file: bool


def container_mounts(container: Obj, sources: Mapping[str, str], *,
                     is_file: Callable[[str], bool] = lambda source: False) -> list[Mount]:
    """The container's ``volumeMounts`` as bind mounts, shallow targets first. ``sources`` maps
    volume names to their host paths; ``is_file(source)`` tells file sources (a hostPath file, a
    ``subPath`` naming one key of a configMap), which are mounted onto files."""
    out = []
    for m in container.get("volumeMounts") or []:
        if not isinstance(m, dict):
            continue
        vol, target = str(m.get("name", "")), str(m.get("mountPath", ""))
        if not target.startswith("/"):
            raise ContainerConfigError(f"volumeMount {vol!r}: mountPath {target!r} must be absolute")
        if vol not in sources:
            raise ContainerConfigError(f"volumeMount {vol!r}: the pod has no such volume")
        source = sources[vol]
        sub = str(m.get("subPath") or "").strip("/")
        if sub:
            if ".." in sub.split("/"):
                raise ContainerConfigError(f"volumeMount {vol!r}: subPath {sub!r} may not contain '..'")
            source = f"{source.rstrip('/')}/{sub}"
        out.append(Mount(source=source, target=target.rstrip("/") or "/", read_only=bool(m.get("readOnly")),
                         is_file=is_file(source)))
    return sorted(out, key=lambda mt: mt.target.count("/"))


def nested_in_other(mount: Mount, mounts: list[Mount]) -> bool:
    """``mount``'s target lies below another mount's target (so its mount point is made inside that
    volume, not on the host)."""
    return any(o is not mount and mount.target.startswith(o.target.rstrip("/") + "/") for o in mounts)


def named_port(container: Obj, port: Any) -> int:
    """A probe's ``port``: a number, or the name of one of the container's ``ports``."""
    if isinstance(port, int):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    for p in container.get("ports") or []:
        if isinstance(p, dict) and p.get("name") == text and p.get("containerPort"):
            return int(p["containerPort"])
    raise ContainerConfigError(f"port {text!r} is not a port number or the name of one of the container's ports")
