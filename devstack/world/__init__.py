"""The running world: one module per dependency, each with its setup, readiness, teardown and logs (the control
plane, Postgres, Prometheus, Alertmanager, the simulator's process, the node, the operator's process, the secured
Prometheus), and ``Stack``, which composes them."""
