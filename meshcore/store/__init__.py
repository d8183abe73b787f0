"""Sync and watch stores over etcd, in the manner of Cilium's ``pkg/kvstore/store``.

- :mod:`.syncstore`: the writer side; coalesces upserts, leases every key, re-creates its keys when
  a lease expires, writes the synced canary once the initial batch has landed.
- :mod:`.listwatch`: list then watch a prefix, resuming after disconnects and re-listing when
  the history is gone.
- :mod:`.watchstore`: the reader side; mark-and-sweep on every re-list, observers, drain.
- :mod:`.watchstoremgr`: canary-gated start of watch stores.
- :mod:`.heartbeat` and :mod:`.clusterconfig`: the two singleton writers of an exporting cluster.
"""
