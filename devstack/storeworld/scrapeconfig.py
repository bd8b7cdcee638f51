"""The stack's Prometheus scrape jobs: the store pods discovered through the API server and labelled exactly as the
two real set-ups label them. Both sets of jobs run in the same Prometheus; their label sets are disjoint, so a query
written for one world sees only that world's series.

**World A, prometheus-operator** (kube-prometheus-stack): what prometheus-operator renders for two PodMonitors
(prometheus-operator:pkg/prometheus/promcfg.go ``generatePodMonitorConfig``), rule for rule:

- ``monitoring/tikv``: ``selector: {}``, ``namespaceSelector: {any: true}``, ``podMetricsEndpoints: [{port: status}]``
  (TiDB Operator names the status port only with ``spec.tikv.enableNamedStatusPort: true``; store pods of
  ``PUT /clusters`` have it too);
- ``monitoring/pd``: ``selector.matchLabels: {app.kubernetes.io/component: pd}``, ``port: client``.

Every series gets ``namespace``, ``pod``, ``container``, ``endpoint``, ``job="monitoring/tikv"`` and
``instance="<podIP>:<port>"``. (A ServiceMonitor would add ``service`` and name the job after the Service; it needs
Endpoints, which refuse the loopback addresses the simulated pods have.)

**World B, TidbMonitor** (TiDB Operator v1's own Prometheus; pingcap/tidb-operator@release-1.6
pkg/monitor/monitor/template.go ``scrapeJob``), rule for rule but for two differences that change no label:

- TidbMonitor renders one job per monitored TidbCluster (``job_name: <ns>-<tc>-tikv`` with keep rules on that
  namespace and instance); here one job covers every TidbCluster and writes the same ``job`` value with a relabel
  rule, so clusters created at any time are scraped without reloading Prometheus;
- TidbMonitor's address is the pod's DNS name ``<pod>.<tc>-tikv-peer.<ns>:<prometheus.io/port>``; there is no
  cluster DNS here, so it is ``<podIP>:<prometheus.io/port>``.

Every series gets ``instance="<pod name>"``, ``kubernetes_namespace``, ``cluster="<tc>"``, ``component``,
``tidb_cluster="<ns>-<tc>"`` and ``job="<ns>-<tc>-tikv"``; no ``namespace``, no ``pod``. Only pods with TiDB
Operator's labels and ``prometheus.io/scrape: "true"`` are scraped (``PUT /tidbclusters``).

Plus ``kube-state-metrics``: the simulator serves ``kube_pod_status_ready`` for the pods it runs, from a pod of its own
in ``kube-system``, discovered the same way (``honor_labels: true``, as kube-prometheus-stack scrapes it).
"""

from __future__ import annotations

from typing import Any

PROMETHEUS_OPERATOR_NAMESPACE = "monitoring"
TIKV_PODMONITOR = "tikv"
PD_PODMONITOR = "pd"
KUBE_STATE_METRICS_JOB = "kube-state-metrics"
KUBE_STATE_METRICS_LABEL = "app.kubernetes.io/name"

Job = dict[str, Any]


def kubernetes_sd(api_server: str, ca_file: str, cert_file: str, key_file: str) -> dict[str, Any]:
    """A ``kubernetes_sd_configs`` entry (role pod, all namespaces) reaching the API server as its admin."""
    return {
        "role": "pod",
        "api_server": api_server,
        "tls_config": {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file},
    }


def _sanitize(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _sharding(shard: int = 0, shards: int = 1) -> list[dict[str, Any]]:
    """prometheus-operator's trailing sharding rules (``$(SHARD)`` substituted by its config reloader)."""
    return [
        {"source_labels": ["__address__", "__tmp_hash"], "target_label": "__tmp_hash", "regex": "(.+);",
         "replacement": "$1", "action": "replace"},
        {"source_labels": ["__tmp_hash"], "target_label": "__tmp_hash", "modulus": shards, "action": "hashmod"},
        {"source_labels": ["__tmp_hash", "__tmp_disable_sharding"], "regex": f"{shard};|.+;.+", "action": "keep"},
    ]  # fmt: skip


def pod_monitor_job(
    sd: dict[str, Any],
    interval: str,
    *,
    namespace: str,
    name: str,
    port: str,
    match_labels: dict[str, str] | None = None,
) -> Job:
    """What prometheus-operator renders for a PodMonitor with one ``podMetricsEndpoints`` entry selecting ``port`` by
    name, ``namespaceSelector: {any: true}``, no ``jobLabel`` and no ``podTargetLabels``."""
    relabelings: list[dict[str, Any]] = [
        {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
    ]
    for key in sorted(match_labels or {}):
        relabelings.append({
            "action": "keep",
            "source_labels": [f"__meta_kubernetes_pod_label_{_sanitize(key)}",
                              f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"],
            "regex": f"({(match_labels or {})[key]});true",
        })  # fmt: skip
    relabelings += [
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": f"{namespace}/{name}"},
        {"target_label": "endpoint", "replacement": port},
        *_sharding(),
    ]
    return {
        "job_name": f"podMonitor/{namespace}/{name}/0",
        "honor_labels": False,
        "kubernetes_sd_configs": [sd],
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "relabel_configs": relabelings,
    }


def tidb_monitor_job(sd: dict[str, Any], interval: str, component: str) -> Job:
    """TidbMonitor's job for ``component`` (``tikv``, ``pd``), for every TidbCluster at once (see the module doc)."""
    instance = "__meta_kubernetes_pod_label_app_kubernetes_io_instance"
    component_label = "__meta_kubernetes_pod_label_app_kubernetes_io_component"
    return {
        "job_name": f"tidbmonitor-{component}",
        "honor_labels": True,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "scheme": "http",
        "kubernetes_sd_configs": [sd],
        "tls_config": {"insecure_skip_verify": True},
        "relabel_configs": [
            # TidbMonitor: regex <tc> and <ns> of the one cluster the job is for.
            {"source_labels": [instance], "action": "keep", "regex": "(.+)"},
            {"source_labels": ["__meta_kubernetes_namespace"], "action": "keep", "regex": "(.+)"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "action": "keep",
             "regex": "true"},
            {"source_labels": [component_label], "action": "keep", "regex": component},
            # TidbMonitor: [pod, instance, namespace, port] → "$1.$2-<component>-peer.$3:$4" (the pod's DNS name).
            {"action": "replace", "regex": "(.+);(.+)", "replacement": "$1:$2", "target_label": "__address__",
             "source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "action": "replace",
             "target_label": "kubernetes_namespace"},
            {"source_labels": [instance], "action": "replace", "target_label": "cluster"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "action": "replace", "target_label": "instance"},
            {"source_labels": [component_label], "action": "replace", "target_label": "component"},
            {"source_labels": ["__meta_kubernetes_namespace", instance], "separator": "-",
             "target_label": "tidb_cluster"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "action": "replace",
             "target_label": "__metrics_path__", "regex": "(.+)"},
            # TidbMonitor: job_name "<ns>-<tc>-<component>" (one job per cluster).
            {"source_labels": ["__meta_kubernetes_namespace", instance], "separator": "-", "regex": "(.+)",
             "replacement": f"$1-{component}", "target_label": "job"},
            {"source_labels": ["__address__"], "action": "hashmod", "target_label": "__tmp_hash", "modulus": 1},
            {"source_labels": ["__tmp_hash"], "regex": "0", "action": "keep"},
        ],
    }  # fmt: skip


def kube_state_metrics_job(sd: dict[str, Any], interval: str) -> Job:
    """The simulator's kube-state-metrics endpoint, found through its pod in ``kube-system``."""
    return {
        "job_name": KUBE_STATE_METRICS_JOB,
        "honor_labels": True,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "kubernetes_sd_configs": [{**sd, "namespaces": {"names": ["kube-system"]}}],
        "relabel_configs": [
            {"action": "keep", "regex": "(kube-state-metrics);true",
             "source_labels": [f"__meta_kubernetes_pod_label_{_sanitize(KUBE_STATE_METRICS_LABEL)}",
                               f"__meta_kubernetes_pod_labelpresent_{_sanitize(KUBE_STATE_METRICS_LABEL)}"]},
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "http"},
            {"target_label": "job", "replacement": KUBE_STATE_METRICS_JOB},
        ],
    }  # fmt: skip


def store_world_jobs(sd: dict[str, Any], interval: str) -> list[Job]:
    """Every job of the store world: both label worlds for TiKV and PD, and kube-state-metrics."""
    return [
        pod_monitor_job(sd, interval, namespace=PROMETHEUS_OPERATOR_NAMESPACE, name=TIKV_PODMONITOR, port="status"),
        pod_monitor_job(sd, interval, namespace=PROMETHEUS_OPERATOR_NAMESPACE, name=PD_PODMONITOR, port="client",
                        match_labels={"app.kubernetes.io/component": "pd"}),
        tidb_monitor_job(sd, interval, "tikv"),
        tidb_monitor_job(sd, interval, "pd"),
        kube_state_metrics_job(sd, interval),
    ]  # fmt: skip


OPERATOR_JOB = "operator-k8s"


def operator_job(pod_sd: dict[str, Any], interval: str) -> Job:
    """The operator's own metrics, as the chart's ServiceMonitor has prometheus-operator scrape them: every endpoint
    of a Service labelled ``app.kubernetes.io/name: operator-k8s`` on its port named ``metrics``."""
    meta = "__meta_kubernetes_"
    return {
        "job_name": OPERATOR_JOB,
        "scrape_interval": interval,
        "kubernetes_sd_configs": [{**pod_sd, "role": "endpoints"}],
        "relabel_configs": [
            {
                "source_labels": [f"{meta}service_label_app_kubernetes_io_name"],
                "regex": "operator-k8s",
                "action": "keep",
            },
            {"source_labels": [f"{meta}endpoint_port_name"], "regex": "metrics", "action": "keep"},
            {"source_labels": [f"{meta}namespace"], "target_label": "namespace"},
            {"source_labels": [f"{meta}service_name"], "target_label": "service"},
            {"source_labels": [f"{meta}pod_name"], "target_label": "pod"},
        ],
    }
