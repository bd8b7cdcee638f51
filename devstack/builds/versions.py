"""Pinned versions of everything the stack builds, so a cache key is just a version string."""

KUBERNETES = "v1.36.3"
ETCD = "v3.6.16"
HELM = "v3.22.0"
CONTAINERD = "v2.4.2"
COREDNS = "v1.15.0"
# The sandbox image's tag (registry.k8s.io/pause:<tag>, built locally by devstack.builds.node).
PAUSE = "3.10"
