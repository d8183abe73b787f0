"""Kubernetes access shared by the API server and the agent: raw list/watch over the official client."""
