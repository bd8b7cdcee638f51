"""Builds: the Go programs the stack runs (control plane, Prometheus, helm, the node's components) and the node's
container images, cached by version under ``CACHE_ROOT``. Nothing here starts a process that outlives the build."""
