"""Pinned versions of everything the stack builds, so a cache key is just a version string."""

KUBERNETES = "v1.36.3"
ETCD = "v3.6.16"
HELM = "v3.22.0"
