"""Per-kind server-side defaulting and validation, the parts a real apiserver does that clients rely on.

- every object: a valid DNS-1123 subdomain name (422 otherwise);
- Namespace: ``status.phase: Active`` and the ``kubernetes.io/metadata.name`` label;
- Service: ``type: ClusterIP``, a cluster IP allocated from the service CIDR (default 10.96.0.0/16; kept on
  update; the allocator is rebuilt from the stored Services on start), ``clusterIPs``, ``ipFamilies``, port
  ``protocol``/``targetPort`` defaults;
- Pod: ``restartPolicy``, ``terminationGracePeriodSeconds``, ``dnsPolicy``, ``schedulerName``, and
  ``status.phase: Pending`` on create;
- Deployment, ReplicaSet, DaemonSet: ``replicas`` (1), strategies and ``revisionHistoryLimit``;
- Secret: ``type: Opaque`` and ``stringData`` folded into base64 ``data``;
- CustomResourceDefinition: structural checks, ``status.acceptedNames``, ``storedVersions`` and the
  ``Established``/``NamesAccepted`` conditions (set at once; there is no asynchronous controller).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
from typing import Any

from lab.kube.api.errors import invalid
from lab.kube.api.kinds import KindInfo, validate_crd

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DEFAULT_SERVICE_CIDR = "10.96.0.0/16"


def now_rfc3339() -> str:
    """The current time as Kubernetes writes timestamps (second precision, ``Z``)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_in(seconds: float) -> str:
    """The time ``seconds`` from now, formatted like :func:`now_rfc3339`."""
    then = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return then.strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_name(info: KindInfo, name: str) -> None:
    """Raise 422 unless ``name`` is a DNS-1123 subdomain (what most kinds require)."""
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise invalid(info.kind, info.group, name, "metadata.name",
                      f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                      "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")


class Defaulter:
    """Applies defaults to objects being written; owns the Service cluster-IP allocator.

    ``service_cidr``: the range cluster IPs come from; its first address is left for the ``kubernetes``
    Service (which asks for it explicitly), allocation starts a bit above it."""

    def __init__(self, service_cidr: str = DEFAULT_SERVICE_CIDR) -> None:
        try:
            self.service_net = ipaddress.ip_network(service_cidr)
        except ValueError as e:
            raise ValueError(f"invalid service CIDR {service_cidr!r}: {e}") from None
        if self.service_net.num_addresses < 16:
            raise ValueError(f"service CIDR {service_cidr} is too small (at least /28)")
        self._used_ips: set[str] = set()
        self._next_ip = 10

    def reset(self) -> None:
        """Forget every allocated IP (before a reload)."""
        self._used_ips.clear()

    def track(self, storage_key: tuple[str, str], obj: dict[str, Any]) -> None:
        """Mark what a stored object holds (its cluster IP) as taken: rebuilds the allocator on start."""
        if storage_key == ("", "services"):
            ip = str((obj.get("spec") or {}).get("clusterIP") or "")
            if ip and ip != "None":
                self._used_ips.add(ip)

    def release(self, info: KindInfo, obj: dict[str, Any]) -> None:
        """Free what a deleted object held (its cluster IP)."""
        if info.kind == "Service" and info.group == "":
            self._used_ips.discard(str((obj.get("spec") or {}).get("clusterIP", "")))

    def apply(self, info: KindInfo, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Default and validate ``obj`` in place (``old`` is the stored object on update)."""
        key = (info.group, info.kind)
        if key == ("", "Namespace"):
            obj.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = \
                obj["metadata"]["name"]
            status = obj.setdefault("status", {})
            status.setdefault("phase", "Active")
        elif key == ("", "Service"):
            self._service(obj, old)
        elif key == ("", "Secret"):
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None)
            if isinstance(string_data, dict):
                data = obj.setdefault("data", {}) or {}
                for k, v in string_data.items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
                obj["data"] = data
        elif key == ("apiextensions.k8s.io", "CustomResourceDefinition"):
            self._crd(info, obj)
        elif key == ("", "Pod"):
            spec = obj.setdefault("spec", {})
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            if old is None:
                obj.setdefault("status", {}).setdefault("phase", "Pending")
        elif key in (("apps", "Deployment"), ("apps", "ReplicaSet"), ("apps", "DaemonSet")):
            self._workload(info.kind, obj)

    @staticmethod
    def _workload(kind: str, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if kind != "DaemonSet":
            spec.setdefault("replicas", 1)
        if kind == "Deployment":
            spec.setdefault("strategy", {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
            spec.setdefault("progressDeadlineSeconds", 600)
        if kind == "DaemonSet":
            spec.setdefault("updateStrategy", {"type": "RollingUpdate",
                                               "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        if kind != "ReplicaSet":
            spec.setdefault("revisionHistoryLimit", 10)

    def _service(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "port" in port:
                    port.setdefault("targetPort", port["port"])
        if spec["type"] == "ExternalName":
            return
        old_ip = ((old or {}).get("spec") or {}).get("clusterIP")
        if not spec.get("clusterIP") and old_ip:
            spec["clusterIP"] = old_ip
        if not spec.get("clusterIP"):
            spec["clusterIP"] = self._allocate()
        elif spec["clusterIP"] != "None":
            self._used_ips.add(str(spec["clusterIP"]))
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if spec["clusterIP"] != "None":
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")

    def _allocate(self) -> str:
        net = self.service_net
        for _ in range(net.num_addresses):
            ip = str(net[self._next_ip])
            self._next_ip = self._next_ip + 1 if self._next_ip + 2 < net.num_addresses else 10
            if ip not in self._used_ips:
                self._used_ips.add(ip)
                return ip
        raise invalid("Service", "", "", "spec.clusterIP", "the service IP range is exhausted")

    def _crd(self, info: KindInfo, obj: dict[str, Any]) -> None:
        problem = validate_crd(obj)
        name = str(obj.get("metadata", {}).get("name", ""))
        if problem:
            field, _, detail = problem.partition(": ")
            raise invalid(info.kind, info.group, name, field, detail)
        spec = obj["spec"]
        names = dict(spec["names"])
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")
        spec["names"] = names
        stamp = now_rfc3339()
        storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
        status = obj.setdefault("status", {})
        stored = list(status.get("storedVersions") or [])
        if storage not in stored:
            stored.append(storage)
        status["storedVersions"] = stored
        status["acceptedNames"] = names
        # keep the transition times of conditions that already hold: re-applying a CRD changes nothing
        held = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)
                and c.get("status") == "True"}
        status["conditions"] = [
            held.get("NamesAccepted") or {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                                          "message": "no conflicts found", "lastTransitionTime": stamp},
            held.get("Established") or {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                                        "message": "the initial names have been accepted",
                                        "lastTransitionTime": stamp},
        ]
