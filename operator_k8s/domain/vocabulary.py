"""The one vocabulary of the API: group, kinds, condition types, reasons, label keys.

Reasons are API (CamelCase constants that users match on); messages are prose.
"""

from enum import StrEnum

GROUP = "operator-k8s.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_KIND = "MonitoredCluster"
CLUSTER_PLURAL = "monitoredclusters"
TICKET_KIND = "Ticket"
TICKET_PLURAL = "tickets"
MAINTENANCE_WINDOW_KIND = "MaintenanceWindow"
MAINTENANCE_WINDOW_PLURAL = "maintenancewindows"

CLUSTER_STORE = "cluster"
"""The store name of findings and tickets about the whole cluster rather than one store."""


class Invariant(StrEnum):
    STORES_READY = "storesReady"
    LATENCY = "latency"
    DISK_USAGE = "diskUsage"
    CRITICAL_ERRORS = "criticalErrors"
    WRITE_STALL = "writeStall"
    PD_STORES = "pdStores"
    PD_REGIONS = "pdRegions"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return [Severity.INFO, Severity.WARNING, Severity.CRITICAL].index(self)


class ConditionType(StrEnum):
    HEALTHY = "Healthy"
    STORES_READY = "StoresReady"
    LATENCY_WITHIN_BUDGET = "LatencyWithinBudget"
    DISK_SPACE_AVAILABLE = "DiskSpaceAvailable"
    NO_CRITICAL_ERRORS = "NoCriticalErrors"
    NO_WRITE_STALL = "NoWriteStall"
    PD_STORES_HEALTHY = "PDStoresHealthy"
    PD_REGIONS_HEALTHY = "PDRegionsHealthy"
    METRICS_AVAILABLE = "MetricsAvailable"
    TICKET_STORE_AVAILABLE = "TicketStoreAvailable"


BUILTIN_CONDITION = {
    Invariant.STORES_READY: ConditionType.STORES_READY,
    Invariant.LATENCY: ConditionType.LATENCY_WITHIN_BUDGET,
    Invariant.DISK_USAGE: ConditionType.DISK_SPACE_AVAILABLE,
    Invariant.CRITICAL_ERRORS: ConditionType.NO_CRITICAL_ERRORS,
    Invariant.WRITE_STALL: ConditionType.NO_WRITE_STALL,
    Invariant.PD_STORES: ConditionType.PD_STORES_HEALTHY,
    Invariant.PD_REGIONS: ConditionType.PD_REGIONS_HEALTHY,
}


def custom_condition_type(name: str) -> str:
    """``replica-lag`` → ``CustomReplicaLag``: a condition type per custom invariant."""
    return "Custom" + "".join(part.capitalize() for part in name.split("-"))


class Reason(StrEnum):
    # Invariant conditions
    HOLDS = "InvariantHolds"
    VIOLATED = "InvariantViolated"
    VIOLATION_PENDING = "ViolationPending"
    HELD_OPEN = "TicketHeld"
    NO_DATA = "NoData"
    # Store readiness
    ALL_STORES_READY = "AllStoresReady"
    STORES_NOT_READY = "StoresNotReady"
    NO_STORES_SELECTED = "NoStoresSelected"
    # Metrics
    METRICS_OK = "MetricsAvailable"
    PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"
    QUERY_FAILED = "QueryFailed"
    NO_SERIES = "NoSeries"
    # Ticket store
    TICKET_STORE_OK = "TicketStoreReachable"
    TICKET_STORE_UNREACHABLE = "TicketStoreUnreachable"
    # Aggregate
    ALL_INVARIANTS_HOLD = "AllInvariantsHold"
    INVARIANTS_VIOLATED = "InvariantsViolated"
    INVARIANTS_UNKNOWN = "InvariantsUnknown"
    INVALID_SPEC = "InvalidSpec"
    CHECK_FAILED = "CheckFailed"
    # Ticket transitions (events and history)
    TICKET_OPENED = "TicketOpened"
    TICKET_REOPENED = "TicketReopened"
    TICKET_ESCALATED = "TicketEscalated"
    TICKET_RESOLVED = "TicketResolved"
    TICKET_ACKNOWLEDGED = "TicketAcknowledged"
    CLUSTER_DELETED = "ClusterDeleted"
    INVARIANT_REMOVED = "InvariantRemoved"


class Label:
    """Label keys on Ticket resources, for ``kubectl get tickets -l invariant=latency``."""

    CLUSTER = "operator-k8s.io/cluster"
    CLUSTER_UID = "operator-k8s.io/cluster-uid"
    """Which MonitoredCluster a Ticket shows a ticket of, even if its ownerReference was removed."""
    INVARIANT = "invariant"
    SEVERITY = "severity"
    STATE = "state"
    MANAGED_BY = "app.kubernetes.io/managed-by"


MANAGER = "operator-k8s"

INTENT_ANNOTATION = "operator-k8s.io/shown-intent"
"""The human intent (spec) the operator last showed on a Ticket, as JSON: a spec that differs from it was edited
since, by someone else (kept on the object, so a restart or another replica reads it, never a memory)."""

MAINTENANCE_WINDOWS_INDEX = "maintenance_windows"
"""kopf's index of valid MaintenanceWindows by namespace (``maintenance_handlers``)."""
MAINTAINED_CLUSTERS_INDEX = "maintained_clusters"
"""kopf's index of MonitoredClusters' labels by (namespace, name): what maintenance windows' selectors match."""
TIDB_CLUSTERS_INDEX = "tidb_clusters"
"""kopf's index of TidbClusters (TiDB Operator) by (namespace, name): what their operator reports, read for automatic
maintenance windows (``domain.maintenance.operator_window``)."""
MAINTENANCE_SOURCES_INDEX = "maintenance_sources"
"""kopf's index of the TidbCluster each MonitoredCluster names in ``spec.maintenance.tidbCluster``, by (namespace,
name)."""
TIDB_GROUP = "pingcap.com"
TIDB_VERSION = "v1alpha1"
TIDB_CLUSTER_PLURAL = "tidbclusters"
