"""Pure helpers over Kubernetes objects as plain dicts (the JSON the API returns).

Accessors (metadata, labels, owner references), label and node selectors as the apiserver and the
scheduler read them, pod state as kube-controller-manager's ``controller`` and ``podutil`` packages
define it (active, terminating, ready, available), timestamps, and the stable template hash that names
ReplicaSets (``pod-template-hash``) and DaemonSet pod revisions (``controller-revision-hash``).
Nothing here does I/O or reads the clock: callers pass ``now`` (seconds since the epoch).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

Obj = dict[str, Any]

# The alphabet of apimachinery's rand.SafeEncodeString (no vowels, no confusable digits).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# ----- metadata -----

def meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` (an empty dict when missing)."""
    md = obj.get("metadata")
    return md if isinstance(md, dict) else {}


def name(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("name", ""))


def namespace(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("namespace") or "")


def uid(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("uid", ""))


def key(obj: Mapping[str, Any]) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects (client-go's MetaNamespaceKey)."""
    ns = namespace(obj)
    return f"{ns}/{name(obj)}" if ns else name(obj)


def split_key(k: str) -> tuple[str | None, str]:
    """Inverse of :func:`key`: ``(namespace or None, name)``."""
    ns, sep, n = k.partition("/")
    return (ns, n) if sep else (None, ns)


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    lb = meta(obj).get("labels")
    return lb if isinstance(lb, dict) else {}


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    an = meta(obj).get("annotations")
    return an if isinstance(an, dict) else {}


def spec(obj: Mapping[str, Any]) -> dict[str, Any]:
    s = obj.get("spec")
    return s if isinstance(s, dict) else {}


def status(obj: Mapping[str, Any]) -> dict[str, Any]:
    s = obj.get("status")
    return s if isinstance(s, dict) else {}


def generation(obj: Mapping[str, Any]) -> int:
    return int(meta(obj).get("generation") or 0)


def is_terminating(obj: Mapping[str, Any]) -> bool:
    """The object has a ``deletionTimestamp`` (graceful deletion or finalizers pending)."""
    return bool(meta(obj).get("deletionTimestamp"))


def owner_refs(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    refs = meta(obj).get("ownerReferences")
    return [r for r in refs if isinstance(r, dict)] if isinstance(refs, list) else []


def controller_ref(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The owner reference with ``controller: true``, if any."""
    return next((r for r in owner_refs(obj) if r.get("controller")), None)


def is_controlled_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    ref = controller_ref(obj)
    return ref is not None and ref.get("uid") == uid(owner)


def owner_reference(owner: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """A controller owner reference to ``owner`` (what controllers put on what they create)."""
    return {"apiVersion": api_version, "kind": kind, "name": name(owner), "uid": uid(owner),
            "controller": True, "blockOwnerDeletion": True}


# ----- selectors -----

def _requirement(lbls: Mapping[str, str], req: Mapping[str, Any]) -> bool:
    k = str(req.get("key", ""))
    op = req.get("operator")
    values = [str(v) for v in req.get("values") or []]
    if op == "In":
        return k in lbls and lbls[k] in values
    if op == "NotIn":
        return k not in lbls or lbls[k] not in values
    if op == "Exists":
        return k in lbls
    if op == "DoesNotExist":
        return k not in lbls
    if op in ("Gt", "Lt"):  # node selector requirements only: one integer value
        try:
            have, want = int(lbls[k]), int(values[0])
        except (KeyError, IndexError, ValueError):
            return False
        return have > want if op == "Gt" else have < want
    return False  # an unknown operator never matches (the apiserver would have rejected it)


def selector_matches(selector: Mapping[str, Any] | None, lbls: Mapping[str, str]) -> bool:
    """A ``metav1.LabelSelector`` (matchLabels AND matchExpressions). ``None`` matches nothing and an empty
    selector everything, as ``metav1.LabelSelectorAsSelector`` has it."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if lbls.get(k) != v:
            return False
    return all(_requirement(lbls, r) for r in selector.get("matchExpressions") or [])


def map_selector_matches(selector: Mapping[str, str] | None, lbls: Mapping[str, str]) -> bool:
    """A map selector (Service ``spec.selector``, Pod ``spec.nodeSelector``): every pair present."""
    return all(lbls.get(k) == v for k, v in (selector or {}).items())


def node_selector_term_matches(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """One ``NodeSelectorTerm``: its matchExpressions (on labels) AND matchFields (``metadata.name``)."""
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False  # an empty term matches no node
    lbls = labels(node)
    if not all(_requirement(lbls, r) for r in exprs):
        return False
    return all(_requirement({"metadata.name": name(node)}, f) for f in fields)


def required_node_affinity(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The requiredDuringSchedulingIgnoredDuringExecution node selector terms, or None when unset."""
    affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if not isinstance(required, dict):
        return None
    return [t for t in required.get("nodeSelectorTerms") or [] if isinstance(t, dict)]


def node_matches_pod_selectors(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """``spec.nodeSelector`` and the required node affinity (terms ORed) both accept ``node``."""
    if not map_selector_matches(pod_spec.get("nodeSelector"), labels(node)):
        return False
    terms = required_node_affinity(pod_spec)
    return terms is None or any(node_selector_term_matches(t, node) for t in terms)


def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    op = toleration.get("operator") or "Equal"
    tkey = toleration.get("key")
    if not tkey:
        return op == "Exists"  # an empty key with Exists tolerates everything
    if tkey != taint.get("key"):
        return False
    return op == "Exists" or (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taint(tolerations: Iterable[Mapping[str, Any]], node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first NoSchedule/NoExecute taint of ``node`` that no toleration tolerates, or None."""
    tols = list(tolerations)
    for taint in spec(node).get("taints") or []:
        if not isinstance(taint, dict) or taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tols):
            return taint
    return None


# ----- conditions and pod state -----

def condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for c in status(obj).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == type_:
            return c
    return None


def condition_true(obj: Mapping[str, Any], type_: str) -> bool:
    c = condition(obj, type_)
    return c is not None and c.get("status") == "True"


def phase(pod: Mapping[str, Any]) -> str:
    return str(status(pod).get("phase") or "Pending")


def is_terminal(pod: Mapping[str, Any]) -> bool:
    """Phase Succeeded or Failed: the pod will not run again."""
    return phase(pod) in ("Succeeded", "Failed")


def is_active(pod: Mapping[str, Any]) -> bool:
    """Counted as a replica (``controller.IsPodActive``): not terminal, not terminating."""
    return not is_terminal(pod) and not is_terminating(pod)


def is_ready(pod: Mapping[str, Any]) -> bool:
    return condition_true(pod, "Ready")


def is_available(pod: Mapping[str, Any], min_ready_seconds: int, now: float) -> bool:
    """Ready for at least ``min_ready_seconds`` (``podutil.IsPodAvailable``)."""
    if not is_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    return since is not None and since + min_ready_seconds <= now


def available_in(pod: Mapping[str, Any], min_ready_seconds: int, now: float) -> float | None:
    """Seconds until a ready but not yet available pod becomes available (None if not applicable)."""
    if min_ready_seconds <= 0 or not is_ready(pod):
        return None
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    if since is None:
        return None
    left = since + min_ready_seconds - now
    return left if left > 0 else None


def node_ready(node: Mapping[str, Any]) -> bool:
    return condition_true(node, "Ready")


def set_condition(conditions: Iterable[Mapping[str, Any]], new: Mapping[str, Any], now: float,
                  *, update_time_field: str | None = None) -> list[dict[str, Any]]:
    """``conditions`` with ``new`` merged in by type: ``lastTransitionTime`` kept while ``status`` stays;
    other fields replaced. ``update_time_field`` (e.g. ``lastUpdateTime``) is refreshed when anything changed."""
    stamp = rfc3339(now)
    out: list[dict[str, Any]] = []
    placed = False
    for c in conditions:
        if c.get("type") != new.get("type"):
            out.append(dict(c))
            continue
        placed = True
        merged = {**c, **new}
        changed = any(c.get(f) != new.get(f) for f in ("status", "reason", "message"))
        if c.get("status") != new.get("status") or not c.get("lastTransitionTime"):
            merged["lastTransitionTime"] = stamp
        if update_time_field and (changed or not c.get(update_time_field)):
            merged[update_time_field] = stamp
        out.append(merged)
    if not placed:
        created = {**new, "lastTransitionTime": stamp}
        if update_time_field:
            created[update_time_field] = stamp
        out.append(created)
    return out


# ----- time -----

def rfc3339(t: float) -> str:
    """Seconds since the epoch as Kubernetes writes timestamps (second precision, ``Z``)."""
    return datetime.datetime.fromtimestamp(int(t), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float | None:
    """An RFC 3339 timestamp to seconds since the epoch (None when absent or malformed)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def created_at(obj: Mapping[str, Any]) -> float:
    return parse_time(meta(obj).get("creationTimestamp")) or 0.0


# ----- int-or-percent and hashing -----

def scaled_value(value: Any, total: int, *, round_up: bool, default: str) -> int:
    """``intstr.GetScaledValueFromIntOrPercent``: an int, or ``"N%"`` of ``total`` rounded up or down."""
    if value is None:
        value = default
    if isinstance(value, bool):
        raise ValueError(f"invalid int-or-percent value {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        pct = int(text[:-1])
        scaled = pct * total
        return -(-scaled // 100) if round_up else scaled // 100
    return int(text)


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    """apimachinery's ``rand.SafeEncodeString``: each byte mapped into :data:`SAFE_ALPHABET`."""
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in text.encode())


def pruned(value: Any) -> Any:
    """``value`` without null, ``{}`` and ``[]`` members (recursively), so that documents equal to
    apimachinery's semantic equality compare equal: ``creationTimestamp: null`` or ``resources: {}`` as a
    typed client (``kubectl rollout undo``) writes them back mean the same as their absence."""
    if isinstance(value, dict):
        out = {k: pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def template_hash(template: Mapping[str, Any], collision_count: int = 0) -> str:
    """A stable short hash of a pod template, as ``controller.ComputeHash`` makes it: FNV-32a over the
    template (here its canonical JSON, :func:`pruned`, with any ``pod-template-hash`` label left out) and the
    collision count, rendered in decimal and safe-encoded (e.g. ``7d8f6c9b5``)."""
    tpl = pruned(without_label(template, "pod-template-hash"))
    data = json.dumps(tpl, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += str(collision_count).encode()
    return safe_encode(str(fnv32a(data)))


def without_label(template: Mapping[str, Any], label: str) -> dict[str, Any]:
    """A copy of a pod template without one label (and without an emptied labels map)."""
    tpl: dict[str, Any] = json.loads(json.dumps(template))
    md = tpl.get("metadata")
    if isinstance(md, dict) and isinstance(md.get("labels"), dict):
        md["labels"].pop(label, None)
        if not md["labels"]:
            del md["labels"]
    if isinstance(md, dict) and not md:
        del tpl["metadata"]
    return tpl


def deep_copy(obj: Any) -> Any:
    """A deep copy of a JSON document."""
    return json.loads(json.dumps(obj))
