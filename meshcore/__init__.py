"""The shared core of the mesh: Cilium wire records and keys, the etcd client, sync and watch
stores, and the errors, config and logging helpers that both the API server and the agent use.

``agent`` and ``clustermesh_apiserver`` never import each other; whatever both need lives here.
"""
