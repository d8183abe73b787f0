"""The lab's node runtime (the kubelet of a lab node): see lab/README.md."""
