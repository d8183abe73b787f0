"""Per-cluster clustermesh API server: exports Kubernetes state into etcd in Cilium's layout."""
