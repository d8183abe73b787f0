"""How to reach one etcd cluster: endpoints, TLS files, timeouts, host aliases.

:func:`load_etcd_config` reads the etcd ``clientv3/yaml`` file format that Cilium mounts for every
remote cluster (``/var/lib/cilium/clustermesh/<cluster>``), including Cilium's
``cilium-host-aliases`` extension. Relative file paths resolve against the YAML file's directory.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from meshcore.errors import ConfigError

DEFAULT_DIAL_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_TIME = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class EtcdClientConfig:
    """Validated connection settings for one etcd cluster.

    ``endpoints`` are ``http://`` or ``https://`` URLs; https uses ``trusted_ca_file`` (or the
    system roots) and, for mTLS, ``cert_file``/``key_file``. ``tls_server_name`` overrides the name
    the server certificate is verified against. ``host_aliases`` maps an endpoint hostname to IPs
    to dial instead of resolving it (Cilium's ``cilium-host-aliases``); the certificate is still
    verified for the hostname. Times are in seconds.
    """

    endpoints: Sequence[str]
    trusted_ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    dial_timeout: float = DEFAULT_DIAL_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    tls_server_name: str | None = None
    host_aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)
    keepalive_time: float = DEFAULT_KEEPALIVE_TIME
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT

    def __post_init__(self) -> None:
        # Normalise to immutable containers so a config can be shared between tasks safely.
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        object.__setattr__(
            self, "host_aliases", {h: tuple(ips) for h, ips in dict(self.host_aliases).items()}
        )
        for name in ("trusted_ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        _validate(self, source="EtcdClientConfig")

    @property
    def uses_tls(self) -> bool:
        """True when the endpoints are https."""
        return any(e.startswith("https://") for e in self.endpoints)


def _validate(cfg: EtcdClientConfig, *, source: str) -> None:
    if not cfg.endpoints:
        raise ConfigError(f"{source}: field 'endpoints' is empty; list at least one https:// URL")
    schemes = set()
    for ep in cfg.endpoints:
        schemes.add(parse_endpoint(ep, source=source)[0])
    if len(schemes) > 1:
        raise ConfigError(f"{source}: field 'endpoints' mixes http:// and https:// URLs; use one scheme")
    if (cfg.cert_file is None) != (cfg.key_file is None):
        present, missing = ("cert-file", "key-file") if cfg.key_file is None else ("key-file", "cert-file")
        raise ConfigError(f"{source}: '{present}' is set but '{missing}' is not; set both or neither")
    for label, value in (("dial-timeout", cfg.dial_timeout), ("request-timeout", cfg.request_timeout)):
        if not value > 0:
            raise ConfigError(f"{source}: field '{label}' must be positive, got {value!r}")
    for host, ips in cfg.host_aliases.items():
        if not ips:
            raise ConfigError(f"{source}: host alias {host!r} has no 'ips'")
        for ip in ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(
                    f"{source}: host alias {host!r} has {ip!r}, which is not an IP address"
                ) from None


def parse_endpoint(url: str, *, source: str = "etcd config") -> tuple[str, str, int]:
    """Split an endpoint URL into (scheme, host, port); raises :class:`ConfigError` if invalid."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{source}: endpoint {url!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"{source}: endpoint {url!r} must start with http:// or https:// (e.g. https://host:2379)"
        )
    if not parts.hostname:
        raise ConfigError(f"{source}: endpoint {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{source}: endpoint {url!r} must not have a path, query or fragment")
    return parts.scheme, parts.hostname, port if port is not None else 2379


_DURATION_PART = r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)"
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: Any, *, source: str, name: str) -> float:
    """A Go ``time.Duration`` as YAML carries it: integer nanoseconds, or a string like ``5s``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value / 1e9
    if isinstance(value, str) and re.fullmatch(f"({_DURATION_PART})+", value.strip()):
        # Go durations may chain units ("1m30s").
        total = sum(float(m.group(1)) * _UNIT_SECONDS[m.group(2)] for m in re.finditer(_DURATION_PART, value))
        if total > 0:
            return total
    raise ConfigError(f"{source}: field '{name}' must be a positive duration such as '5s', got {value!r}")


def load_etcd_config(path: Path | str) -> EtcdClientConfig:
    """Read an etcd clientv3 YAML config file (Cilium's per-cluster clustermesh config).

    Raises :class:`ConfigError` naming the file and field for anything that would make the client
    unusable: unreadable or non-YAML file, no endpoints, bad URLs, missing certificate files, a
    certificate without its key, unsupported options.
    """
    path = Path(path)
    src = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read etcd config {src}: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"etcd config {src} is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(
            f"etcd config {src} must be a YAML mapping with an 'endpoints' list, got {type(doc).__name__}"
        )
    base = path.parent

    endpoints = doc.get("endpoints")
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not endpoints:
        raise ConfigError(f"etcd config {src}: field 'endpoints' is missing or empty; list the etcd URLs")
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        raise ConfigError(f"etcd config {src}: field 'endpoints' must be a list of URL strings")

    for unsupported in ("username", "password"):
        if doc.get(unsupported):
            raise ConfigError(
                f"etcd config {src}: field '{unsupported}' (password auth) is not supported; "
                "use client certificates ('cert-file'/'key-file') instead"
            )
    if doc.get("insecure-skip-tls-verify"):
        raise ConfigError(
            f"etcd config {src}: 'insecure-skip-tls-verify' is not supported; set 'trusted-ca-file'"
        )

    insecure = bool(doc.get("insecure-transport"))

    def file_field(*names: str) -> Path | None:
        for name in names:
            value = doc.get(name)
            if value in (None, ""):
                continue
            if not isinstance(value, str):
                raise ConfigError(f"etcd config {src}: field '{name}' must be a file path string")
            p = Path(value)
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise ConfigError(f"etcd config {src}: field '{name}' names {p}, which does not exist")
            return p
        return None

    ca = None if insecure else file_field("trusted-ca-file", "ca-file")
    cert = None if insecure else file_field("cert-file")
    key = None if insecure else file_field("key-file")

    aliases: dict[str, list[str]] = {}
    raw_aliases = doc.get("cilium-host-aliases") or []
    if not isinstance(raw_aliases, list):
        raise ConfigError(
            f"etcd config {src}: field 'cilium-host-aliases' must be a list of {{hostname, ips}}"
        )
    for i, entry in enumerate(raw_aliases):
        where = f"etcd config {src}: 'cilium-host-aliases[{i}]'"
        if not isinstance(entry, dict) or not isinstance(entry.get("hostname"), str):
            raise ConfigError(f"{where} must be a mapping with a 'hostname' string and an 'ips' list")
        ips = entry.get("ips")
        if not isinstance(ips, list) or not ips or not all(isinstance(ip, str) for ip in ips):
            raise ConfigError(f"{where} ({entry['hostname']}) needs a non-empty 'ips' list of strings")
        aliases.setdefault(entry["hostname"], []).extend(ips)

    kwargs: dict[str, Any] = {}
    for yaml_name, attr in (
        ("dial-timeout", "dial_timeout"),
        ("dial-keep-alive-time", "keepalive_time"),
        ("dial-keep-alive-timeout", "keepalive_timeout"),
    ):
        if doc.get(yaml_name) not in (None, 0):
            kwargs[attr] = _duration(doc[yaml_name], source=f"etcd config {src}", name=yaml_name)

    try:
        return EtcdClientConfig(
            endpoints=endpoints,
            trusted_ca_file=ca,
            cert_file=cert,
            key_file=key,
            host_aliases=aliases,
            **kwargs,
        )
    except ConfigError as e:
        raise ConfigError(str(e).replace("EtcdClientConfig", f"etcd config {src}", 1)) from None
