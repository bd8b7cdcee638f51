"""A real local stack for operator-k8s: etcd, kube-apiserver, Postgres, Prometheus and a store simulator.

Development and test tooling only; it is not part of the shipped operator.
"""
