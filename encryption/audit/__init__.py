"""``clustermesh encryption audit``: proof from the wire that no pod traffic crosses between nodes
in plaintext.

- :mod:`~encryption.audit.classify` (pure): one captured packet -> wireguard, ipsec, plaintext-pod,
  plaintext-host, plaintext-node, vxlan-other or malformed;
- :mod:`~encryption.audit.capture` (I/O): an AF_PACKET capture on one interface for a while,
  summarised (``python -m encryption.audit.capture``, run inside each node);
- :mod:`~encryption.audit.report` (pure): every node's capture merged into a verdict.
"""
