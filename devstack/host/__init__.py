"""Host primitives: child processes owned by pid, certificates, the repository's paths, and what node mode changes
on the machine (bridge, iptables, mounts, cgroups) recorded and restored. No knowledge of any component."""
