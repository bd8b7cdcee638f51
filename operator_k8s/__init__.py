"""operator-k8s: holds invariants over stateful distributed stores and turns violations into tickets."""
