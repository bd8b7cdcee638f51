"""Thin adapters that hide Kubernetes, Prometheus and Postgres behind the ports; they return domain values."""
