"""Jobs that drive the running world: the narrated demo and ``up``, the benchmark, the referee and the rendered
manifests. Each is independent of the others."""
