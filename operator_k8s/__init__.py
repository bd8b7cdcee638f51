"""operator-k8s: holds invariants over stateful distributed stores and turns violations into tickets."""

from operator_k8s.adapters import lazy_kubernetes

lazy_kubernetes.install()  # before kopf or an adapter imports kubernetes-asyncio's client (see that module)
