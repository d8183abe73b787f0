"""Generated etcd v3 gRPC stubs (etcd 3.4.23). Do not edit.

Regenerate with ``.venv/bin/python scripts/gen_etcd_protos.py``; see that script for how the
upstream protos are adapted.
"""
