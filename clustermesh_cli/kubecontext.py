"""One way for the CLI's commands to reach a cluster: a kubeconfig context, loaded for the official
(synchronous) Kubernetes client with few retries, so a dead API is reported quickly."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from meshcore.errors import ConfigError

RETRIES: Final = 1  # urllib3's default of 3 makes a dead API slow to report


def context_configuration(context: str | None, kubeconfig: str | Path | None = None) -> client.Configuration:
    """The client configuration of ``context`` in ``kubeconfig`` (default: ``$KUBECONFIG`` or
    ``~/.kube/config``); raises :class:`ConfigError` naming the context and file."""
    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig is not None else None,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except (ConfigException, OSError, ValueError) as err:
        raise ConfigError(f"cannot use context {context!r} of kubeconfig {kubeconfig or '(default)'}: {err}") \
            from None
    configuration.retries = RETRIES
    return configuration
