"""PD's store API (``GET /pd/api/v1/stores`` on PD's client port, tikv/pd server/api/store.go): what PD says of each
store, read when a ticket's evidence is gathered. Every PD version serves it, so it names the stores an older PD's
series only count (``pd_cluster_status{type}`` without ``store``), and it gives each store's state, slow score and
pending peers beside the series. Pure: the adapter reads at most ``PD_STORES_BYTES`` and hands the JSON here."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

PD_STORES_PATH = "/pd/api/v1/stores"
PD_STORES_BYTES = 256 * 1024
"""At most this much of PD's answer is read (a few hundred stores); a longer one is refused, not cut."""
PD_STORES_KEPT = 16
"""At most this many of the cluster's stores are kept in the evidence (the ticket's own first)."""
LOW_SPACE_RATIO = 0.8
"""PD's ``low-space-ratio`` default: a store is low on space once available/capacity < 1 - 0.8."""
SLOW_SCORE_SLOW = 80.0
STATES = {"Up": "up", "Disconnected": "disconnected", "Down": "down", "Offline": "offline", "Tombstone": "tombstone"}
"""PD's ``state_name`` (Disconnected and Down are derived from the last heartbeat, pkg/response/store.go) as the
``store_<state>_count`` types of ``pd_cluster_status`` name them."""

_BINARY = {"b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50, "eib": 2**60}
_BYTES = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def byte_size(value: object) -> int | None:
    """PD's ``typeutil.ByteSize`` as the API writes it (``"100GiB"``, ``"1.953GiB"``; a bare number is bytes)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    found = _BYTES.match(str(value or ""))
    if found is None:
        return None
    factor = _BINARY.get((found.group(2) or "b").lower())
    return None if factor is None else int(float(found.group(1)) * factor)


def store_pod(address: object, pods: Sequence[str]) -> str | None:
    """The pod a store's address names, as TiDB Operator sets it (``<pod>.<cluster>-tikv-peer.<ns>.svc:20160``),
    when it is one of ``pods`` (the cluster's own stores): never a pod guessed from another cluster's address."""
    host = str(address or "").rsplit(":", 1)[0]
    pod = host.split(".", 1)[0]
    return pod if pod and pod in pods else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _store_view(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    meta, status = entry.get("store"), entry.get("status")
    if not isinstance(meta, dict) or not isinstance(status, dict):
        return None
    state = STATES.get(str(meta.get("state_name")))
    capacity, available = byte_size(status.get("capacity")), byte_size(status.get("available"))
    low = bool(capacity and available is not None and available / capacity < 1 - LOW_SPACE_RATIO)
    score = _number(status.get("slow_score"))
    states = [state] if state else []
    if low and state not in ("down", "offline", "tombstone"):
        states.append("low_space")
    if score is not None and score >= SLOW_SCORE_SLOW and state == "up":
        states.append("slow")
    return {
        "id": meta.get("id") if isinstance(meta.get("id"), int) else None,
        "stateName": str(meta.get("state_name") or "?")[:32],
        "states": states,
        "slowScore": score,
        "pendingPeers": int(_number(status.get("pending_peer_count")) or 0),
        "regions": int(_number(status.get("region_count")) or 0),
        "availablePercent": round(100 * available / capacity, 1) if capacity and available is not None else None,
        "lowSpace": low,
        "lastHeartbeat": str(status.get("last_heartbeat_ts") or "")[:40] or None,
    }


def pd_stores_evidence(body: object, pods: Sequence[str], first: str | None = None) -> dict[str, Any]:
    """What the diagnosis keeps of PD's store API: each of the cluster's stores (``pods``) by pod, the ticket's
    store (``first``) first, at most ``PD_STORES_KEPT``; an answer of another shape says so, nothing is guessed."""
    entries = body.get("stores") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return {"readable": False, "why": "its answer has no stores list"}
    stores: dict[str, dict[str, Any]] = {}
    for entry in entries:
        meta = entry.get("store") if isinstance(entry, dict) else None
        pod = store_pod(meta.get("address"), pods) if isinstance(meta, dict) else None
        view = _store_view(entry) if pod and isinstance(entry, dict) else None
        if pod and view:
            stores[pod] = view
    order = sorted(stores, key=lambda pod: (pod != first, pod))[:PD_STORES_KEPT]
    return {"readable": True, "count": len(entries), "stores": {pod: stores[pod] for pod in order}}


def api_states(evidence: Mapping[str, Any]) -> dict[str, list[str]]:
    """PD's states of each store by pod, from its store API (empty when it was not read or not reachable)."""
    api = evidence.get("pdApi") or {}
    if not api.get("readable"):
        return {}
    return {pod: list(view.get("states") or []) for pod, view in (api.get("stores") or {}).items()}


def api_store(evidence: Mapping[str, Any], pod: str) -> dict[str, Any] | None:
    api = evidence.get("pdApi") or {}
    found = (api.get("stores") or {}).get(pod) if api.get("readable") else None
    return found if isinstance(found, dict) else None


def api_text(view: Mapping[str, Any]) -> str:
    """One phrase of what PD's API says of a store, for the summary and a finding's details."""
    parts = [f"PD API: {view.get('stateName')}"]
    if view.get("slowScore") is not None:
        parts.append(f"slow score {view['slowScore']:g}")
    if view.get("pendingPeers"):
        parts.append(f"{view['pendingPeers']} pending peers")
    if view.get("lowSpace"):
        parts.append(f"low space ({view.get('availablePercent')}% available)")
    return ", ".join(parts)
