"""Per-cluster clustermesh API server: exports Kubernetes state into etcd in Cilium's layout.

- :mod:`.config` (:class:`~.config.ApiServerConfig`) and :mod:`.cli` (``clustermesh-apiserver``);
- :mod:`.server` (:class:`~.server.ApiServer`): the daemon, wiring the parts below together;
- :mod:`.converters`: pure Kubernetes object -> wire record conversions;
- :mod:`.exporters`: stateful, I/O-free event handlers turning events into sync-store intents;
- :mod:`.resources`, :mod:`.synchronizer`: what is watched, and the watch -> exporter loop;
- :mod:`.stores`, :mod:`.sweep`: the per-prefix sync stores and the start-up stale-key sweep;
- :mod:`.identitystate`: kubernetes-mode identity allocations across restarts;
- :mod:`.health`, :mod:`.metrics`: ``/healthz``, ``/readyz``, ``/metrics``;
- :mod:`.etcdinit`: etcd users and roles.
"""
