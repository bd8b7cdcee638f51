"""A faithful TiKV/PD world: one metrics endpoint per store pod, pods in the real API server, real-world faults.

Every TiKV and PD pod gets an endpoint of its own on a loopback address (``127.10.x.y``; Linux routes all of
127.0.0.0/8 to ``lo``) and the real port (TiKV status 20180, PD client 2379), or ``127.0.0.1`` and a free port where
such an address cannot be bound. The pod's ``status.podIP`` is that address and its container port is named as TiDB
Operator names it, so Prometheus finds it through the API server (``devstack.storeworld.scrapeconfig``). An endpoint
serves what TiKV or PD serves (``devstack.storeworld.model``): real series, names, types and label sets, and no
identity label.

Control API (JSON over HTTP on ``127.0.0.1:<port>``):

- ``PUT /tidbclusters/{namespace}/{tc}`` ``{"stores": 3, "pd": 3}`` creates a TidbCluster as TiDB Operator v1 runs
  it: pods ``<tc>-tikv-<n>`` and ``<tc>-pd-<n>`` labelled ``app.kubernetes.io/{component,instance,name,managed-by}``
  (+ ``tidb.pingcap.com/store-id``), annotated ``prometheus.io/{scrape,path,port}``. Optional: ``labels`` (added to
  every pod), ``regions`` (1000), ``pdVersion`` (``v8.5.4``: ``pd_cluster_status{type}``; ``v8.5.5``: per store),
  ``timings`` (``storeHeartbeatSeconds`` 10, ``storeDisconnectSeconds`` 20, ``storeUnhealthySeconds`` 600,
  ``maxStoreDownSeconds`` 1800, ``maxPeerDownSeconds`` 600: upstream's, shorten them in tests). Answers
  ``{"pods": [...], "pd": [...], "endpoints": {pod: "ip:port"}}``.
- ``PUT /clusters/{namespace}/{name}`` ``{"stores": 3, "labels": {...}}`` (the older call) creates store pods
  ``{name}-{i}`` with exactly the given labels (default ``app={name}``), exporter-backed too, scraped by the
  prometheus-operator world only; ``"pd": n`` adds PD pods ``{name}-pd-{i}``. Same optional fields.
- ``DELETE /clusters/{namespace}/{name}`` (or ``/tidbclusters/…``) deletes the pods and their endpoints.
- ``PUT /clusters/{namespace}/{name}/stores/{pod}/faults/{kind}`` (also under ``/tidbclusters/``; body: the fault's
  parameters) injects a fault, ``DELETE`` heals it; ``PUT|DELETE /clusters/{namespace}/{name}/faults/{kind}`` for the
  cluster's own faults. Each answers ``{"faults": {...}, "at": <unix time>}``.
- ``PUT /tidbclusters/{namespace}/{tc}/pd-leader`` ``{"pod": "<tc>-pd-1"}`` moves PD leadership.
- A PD pod's endpoint also serves PD's store API, ``GET /pd/api/v1/stores`` (``Cluster.stores_api``: each store's
  ``state_name`` from the same heartbeat model as the series, its address as TiDB Operator names it).
- ``GET /clusters`` shows every pod, its endpoint and faults. ``GET /metrics`` is kube-state-metrics for these pods
  (``kube_pod_status_ready``, ``kube_pod_container_status_restarts_total``), scraped through a pod of its own in
  ``kube-system``.

Faults, each a real-world case (``{"parameter": default}``):

- ``down``: the process is gone (the container waits in CrashLoopBackOff): the pod is NotReady, its endpoint refuses
  connections (``up`` is 0, the series go stale), PD stops hearing from it (disconnected after 20 s, down after
  ``max-store-down-time``). Healing starts the container again: ``restartCount`` + 1, counters from zero. With
  ``{"reason": "OOMKilled"}`` it was killed for its memory (the containers' limit is ``MEMORY_LIMIT``): the last
  termination says so (exit code 137) and ``restartCount`` grows at once. ``{"blockCacheCapacity": "1GiB"}``
  sets the config it was killed with (``"unset"``: ``storage.block-cache.capacity`` left unset, as in a default
  install and in every store until a fault sets it), served at ``GET /config`` on the store's status endpoint once
  it runs again (TiKV's running config as JSON, ``capacity: null`` when unset). The node reports ``NODE_MEMORY``.
- ``hung``: the process is alive and stuck: the pod stays Ready (TiKV pods have no readiness probe by default), the
  endpoint accepts connections and never answers (the scrape times out, ``up`` is 0), no request completes, PD
  reports the store disconnected (``store_disconnected_count`` + 1). Also on PD pods, where leadership moves.
- ``idle``: no traffic (leaders evicted, a fresh scale-out): every counter stops, so ``histogram_quantile`` over
  ``rate()`` is NaN, while the store is perfectly healthy.
- ``contention``: pessimistic-lock waits: about 30 % of ``kv_pessimistic_lock`` requests wait, up to the 1 s
  ``wait-for-lock-timeout``; the p99 over all types reads ~950 ms, ``kv_get`` stays under ~1 ms. Healthy by TiKV's
  own standards.
- ``latency`` ``{"seconds": 0.8, "slowScore": 1}``: point operations (``kv_get``, ``kv_batch_get``, ``kv_prewrite``,
  ``kv_commit``, ``raw_get``, ``raw_put``) take that long; ``slowScore`` is what TiKV's disk inspection reports
  (``tikv_raftstore_slow_score``; PD counts the store slow at 80): raise it for a slow disk, leave it for a cause
  that is not the disk.
- ``disk`` ``{"percent": 95}``: the volume filled by TiKV's own data: ``used`` is that share of ``capacity``,
  ``available`` drops with it.
- ``disk-other`` ``{"percent": 50}``: that share of the volume filled by something else: ``available`` drops,
  ``used`` does not (``available = min(capacity - used, filesystem free)``).
- ``disk-unreadable``: disk stats cannot be read: ``capacity`` and ``available`` are 0.
- ``restart-loop`` ``{"seconds": 5}``: the process restarts every few seconds: ``process_start_time_seconds`` changes,
  counters restart from zero, the pod's ``restartCount`` grows (it stays Ready: each restart is quick).
- ``critical-error`` ``{"type": "default value not found"}``: ``tikv_critical_error_total{type}`` appears and grows
  by one a second.
- ``write-stall`` ``{"cause": "level0"}``: RocksDB write stalls, one a second: the ``tikv_engine_write_stall``
  gauges move and ``tikv_engine_write_stall_reason{db="kv"}`` counts them by reason (one in four reaching the stop
  trigger); ``cause`` says why: ``level0`` (the ``write`` column family's level-0 files pile up past 20,
  ``tikv_engine_num_files_at_level``), ``pending-compaction`` (its ``tikv_engine_pending_compaction_bytes`` past
  192 GiB) or ``memtable`` (too many memtables: neither moves).
- ``crash-loop`` ``{"seconds": 2, "reason": "Error", "message": ""}``: the container exits at every start (a bad
  config, a volume from another cluster: ``"message": "… cluster id mismatch …"``): the pod is NotReady in
  CrashLoopBackOff, ``restartCount`` grows every ``seconds``, the last termination carries ``reason`` (exit code 137
  for ``OOMKilled``, else 1) and ``message``; the endpoint is gone and PD stops hearing from the store.
- ``unschedulable`` ``{"message": "0/1 nodes are available: 1 Insufficient memory. …"}``: the store's pod waits for
  a node (recreated after an eviction): phase Pending, ``PodScheduled`` False (reason Unschedulable, the scheduler's
  message), no container, no endpoint; PD stops hearing from the store. Healing schedules it: a first container.
- ``write-stall`` also takes ``{"writeSeconds": 0}``: above 0, point writes (``kv_prewrite``, ``kv_commit``,
  ``raw_put``) take that long while it stalls (a stall blocks the write path; reads are not slowed).
- ``missing-peers`` ``{"regions": 150}`` (cluster): the PD leader's ``miss-peer-region-count`` reads that many.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client, config

from devstack.storeworld.model import (
    CLUSTER_FAULTS,
    PD_CLIENT_PORT,
    PD_FAULTS,
    PD_PEER_PORT,
    TIKV_SERVER_PORT,
    TIKV_STATUS_PORT,
    Cluster,
    Fault,
    PdMember,
    PdVersion,
    PodState,
    TikvStore,
    Timings,
    fault_parameters,
    header,
    labels,
    store_ids,
)

NODE_NAME = "devstack-node"
NODE_MEMORY = "64Gi"
"""The simulated node's memory (``status.capacity.memory``): what TiKV sizes an unset block cache from where it does
not read its container's limit."""
MEMORY_LIMIT = "2Gi"
"""The store containers' memory limit, as a TidbCluster sets one (an OOM kill is judged against it)."""
KUBE_STATE_METRICS_POD = "kube-state-metrics"
TICK_SECONDS = 0.5
EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger("simulator")


def loopback_addresses(first: int = 10) -> Iterator[str]:
    """``127.<first>.0.1`` onwards, skipping .0 and .255 (never 127.0.x.y: Debian maps the host name to 127.0.1.1)."""
    for a in range(first, 255):
        for b in range(256):
            for c in range(1, 255):
                yield f"127.{a}.{b}.{c}"


def rfc3339(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


@dataclass
class Pod:
    """One simulated pod: its process in the model, its endpoint, and what was last written to its status."""

    namespace: str
    name: str
    cluster: Cluster
    process: TikvStore | PdMember
    component: str  # "tikv" or "pd"
    labels: dict[str, str]
    annotations: dict[str, str]
    host: str = ""
    port: int = 0
    created_at: float = 0.0
    uid: str = ""
    site: web.SockSite | None = None
    patched: PodState | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)  # wakes hung scrapes

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def container(self) -> str:
        return self.component

    def manifest(self) -> dict[str, Any]:
        if self.component == "tikv":
            ports = [{"name": "server", "containerPort": TIKV_SERVER_PORT, "protocol": "TCP"},
                     {"name": "status", "containerPort": self.port, "protocol": "TCP"}]  # fmt: skip
            image = "pingcap/tikv:v8.5.4"
        else:
            ports = [{"name": "server", "containerPort": PD_PEER_PORT, "protocol": "TCP"},
                     {"name": "client", "containerPort": self.port, "protocol": "TCP"}]  # fmt: skip
            image = "pingcap/pd:v8.5.4"
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "annotations": self.annotations,
            },
            "spec": {
                "nodeName": NODE_NAME,
                "containers": [
                    {
                        "name": self.container,
                        "image": image,
                        "ports": ports,
                        "resources": {"limits": {"memory": MEMORY_LIMIT}},
                    }
                ],
            },
        }

    def status(self, state: PodState) -> dict[str, Any]:
        ready = "True" if state.running else "False"
        container: dict[str, Any] = {
            "name": self.container,
            "image": self.manifest()["spec"]["containers"][0]["image"],
            "imageID": "",
            "ready": state.running,
            "started": state.running,
            "restartCount": state.restarts,
            "state": {"running": {"startedAt": rfc3339(state.started_at)}}
            if state.running
            else {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}},
        }
        if state.last_exit_at is not None:
            code = 137 if state.last_exit_reason == "OOMKilled" else 1
            container["lastState"] = {"terminated": {"exitCode": code, "reason": state.last_exit_reason,
                                                     "finishedAt": rfc3339(state.last_exit_at)}}  # fmt: skip
            if state.last_exit_message:
                container["lastState"]["terminated"]["message"] = state.last_exit_message
        now = rfc3339(self.created_at)
        if state.unschedulable is not None:
            # Waiting for a node: phase Pending, PodScheduled False with the scheduler's message, no container.
            moved = rfc3339(time.time())
            return {"status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": state.unschedulable, "lastTransitionTime": moved},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": moved},
                {"type": "Ready", "status": "False", "lastTransitionTime": moved}],
                "containerStatuses": None, "podIP": None, "podIPs": None, "hostIP": None,
                "startTime": None}}  # fmt: skip
        return {
            "status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": self.host,
                "podIPs": [{"ip": self.host}],
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": rfc3339(time.time())},
                    {"type": "Ready", "status": ready, "lastTransitionTime": rfc3339(time.time())},
                ],
                "containerStatuses": [container],
            }
        }


class Simulator:
    def __init__(self, core: Any, control_port: int) -> None:
        self.core = core
        self.control_port = control_port
        self.clusters: dict[tuple[str, str], Cluster] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.by_endpoint: dict[tuple[str, int], Pod] = {}
        self.addresses = loopback_addresses()
        self.loopback_usable = True
        self.exporters = web.AppRunner(self._exporter_app(), access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self.exporters.setup()

    # -- endpoints -----------------------------------------------------------------------------------------------

    async def _serving(self, request: web.Request, kind: type[object] | None = None) -> Pod:
        """The pod whose endpoint the request reached, once it answers: a hung process holds the request until it
        is released, a stopped one drops the connection (HTTP 503 if the drop is not possible)."""
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        pod = self.by_endpoint.get((sockname[0], sockname[1])) if sockname else None
        if pod is None or (kind is not None and not isinstance(pod.process, kind)):
            raise web.HTTPNotFound()
        while pod.process.running and pod.process.hung:
            pod.released.clear()
            await pod.released.wait()
        if not pod.process.running:
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        return pod

    def _exporter_app(self) -> web.Application:
        async def metrics(request: web.Request) -> web.StreamResponse:
            pod = await self._serving(request)
            now = time.time()
            if isinstance(pod.process, TikvStore):
                text = pod.process.exposition(now)
            else:
                text = pod.cluster.pd_exposition(pod.process, now)
            response = web.Response(body=text.encode(), headers={"Content-Type": EXPOSITION})
            response.force_close()  # no keep-alive: a stopped endpoint must not go on answering
            return response

        async def tikv_config(request: web.Request) -> web.StreamResponse:
            """TiKV's status port also serves its running config (PD's client port does not)."""
            pod = await self._serving(request, TikvStore)
            assert isinstance(pod.process, TikvStore)
            response = web.json_response(pod.process.config())
            response.force_close()
            return response

        async def pd_stores(request: web.Request) -> web.StreamResponse:
            """PD's client port also serves its store API (a follower forwards it to the leader; no leader: 503)."""
            pod = await self._serving(request, PdMember)
            if pod.cluster.leader() is None:
                raise web.HTTPServiceUnavailable(text="no leader")
            response = web.json_response(pod.cluster.stores_api(time.time()))
            response.force_close()
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/config", tikv_config)
        app.router.add_get("/pd/api/v1/stores", pd_stores)
        return app

    async def _bind(self, pod: Pod, port: int) -> None:
        """Bind ``pod``'s endpoint: a loopback address of its own and ``port``, or 127.0.0.1 and a free port."""
        if pod.host:
            await self._listen(pod, pod.host, pod.port)
            return
        while self.loopback_usable:
            host = next(self.addresses)
            try:
                await self._listen(pod, host, port)
                return
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    continue  # another stack's simulator has it
                log.warning("Cannot bind loopback addresses (%s); using 127.0.0.1 with ports of their own", error)
                self.loopback_usable = False
        await self._listen(pod, "127.0.0.1", 0)

    async def _listen(self, pod: Pod, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        bound = int(sock.getsockname()[1])
        site = web.SockSite(self.exporters, sock, backlog=256)
        await site.start()
        pod.site, pod.host, pod.port = site, host, bound
        self.by_endpoint[(host, bound)] = pod

    async def _unbind(self, pod: Pod) -> None:
        if pod.site is not None:
            await pod.site.stop()
            pod.site = None
        pod.released.set()

    # -- pods ------------------------------------------------------------------------------------------------------

    async def _create_pod(self, pod: Pod) -> None:
        await self._bind(pod, TIKV_STATUS_PORT if pod.component == "tikv" else PD_CLIENT_PORT)
        if "prometheus.io/port" in pod.annotations:
            pod.annotations["prometheus.io/port"] = str(pod.port)  # the port it got
        try:
            created = await self._create_when_admitted(pod.namespace, pod.manifest())
        except client.ApiException as error:
            if error.status != 409:
                await self._unbind(pod)
                raise
            created = await self.core.read_namespaced_pod(pod.name, pod.namespace)
        pod.uid = created.metadata.uid or ""
        self.pods[(pod.namespace, pod.name)] = pod
        await self._sync_status(pod, force=True)

    async def _create_when_admitted(self, namespace: str, manifest: dict[str, Any]) -> Any:
        """Create a pod; with a controller manager running (node mode), a namespace's ``default`` ServiceAccount
        appears a moment after the namespace, and ServiceAccount admission refuses pods until it does."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return await self.core.create_namespaced_pod(namespace, manifest)
            except client.ApiException as error:
                waiting = error.status == 403 and "service account" in str(error.body)
                if not waiting or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _sync_status(self, pod: Pod, force: bool = False) -> None:
        state = pod.process.pod_state()
        if not force and state == pod.patched:
            return
        try:
            await self.core.patch_namespaced_pod_status(pod.name, pod.namespace, pod.status(state))
            pod.patched = state
        except client.ApiException as error:
            log.warning("Cannot patch the status of %s/%s: %s", pod.namespace, pod.name, error.reason)

    async def create_cluster(self, namespace: str, name: str, body: dict[str, Any], *, tidb: bool) -> dict[str, Any]:
        key = (namespace, name)
        stores, members = int(body.get("stores", 3)), int(body.get("pd", 3 if tidb else 0))
        extra = {str(k): str(v) for k, v in (body.get("labels") or {}).items()}
        cluster = self.clusters.get(key)
        if cluster is None:
            cluster = Cluster(
                namespace,
                name,
                stores={},
                regions=int(body.get("regions", 1000)),
                timings=Timings.from_json(dict(body.get("timings") or {})),
                pd_version=PdVersion(str(body.get("pdVersion", PdVersion.CLASSIC.value))),
            )
            self.clusters[key] = cluster
        now = time.time()
        new: list[Pod] = []
        ids = store_ids(stores)
        for index in range(stores):
            pod_name = f"{name}-tikv-{index}" if tidb else f"{name}-{index}"
            if pod_name in cluster.stores:
                continue
            store = TikvStore(pod_name, started_at=now, store_id=ids[index])
            cluster.stores[pod_name] = store
            if tidb:
                pod_labels = {**tidb_labels(name, "tikv"), "tidb.pingcap.com/store-id": str(store.store_id),
                              "apps.kubernetes.io/pod-index": str(index),
                              "statefulset.kubernetes.io/pod-name": pod_name, **extra}  # fmt: skip
                annotations = {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics",
                               "prometheus.io/port": str(TIKV_STATUS_PORT)}  # fmt: skip
            else:
                pod_labels, annotations = (extra or {"app": name}), {}
            new.append(Pod(namespace, pod_name, cluster, store, "tikv", pod_labels, annotations, created_at=now))
        for index in range(members):
            pod_name = f"{name}-pd-{index}"
            if pod_name in cluster.pd:
                continue
            member = PdMember(pod_name, started_at=now)
            cluster.pd[pod_name] = member
            cluster.preferred_leader = cluster.preferred_leader or pod_name
            pod_labels = {**tidb_labels(name, "pd"), "apps.kubernetes.io/pod-index": str(index),
                          "statefulset.kubernetes.io/pod-name": pod_name, **(extra if tidb else {})}  # fmt: skip
            annotations = {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics",
                           "prometheus.io/port": str(PD_CLIENT_PORT)} if tidb else {}  # fmt: skip
            new.append(Pod(namespace, pod_name, cluster, member, "pd", pod_labels, annotations, created_at=now))
        await asyncio.gather(*(self._create_pod(pod) for pod in new))
        log.info("Created pods", extra={"namespace": namespace, "pods": [p.name for p in new]})
        names = [*cluster.stores, *cluster.pd]
        return {
            "pods": list(cluster.stores),
            "pd": list(cluster.pd),
            "endpoints": {name: self.pods[(namespace, name)].endpoint for name in names},
        }

    async def delete_cluster(self, namespace: str, name: str) -> None:
        cluster = self.clusters.pop((namespace, name), None)
        if cluster is None:
            return
        for pod in [p for p in self.pods.values() if p.cluster is cluster]:
            self.pods.pop((pod.namespace, pod.name), None)
            self.by_endpoint.pop((pod.host, pod.port), None)
            await self._unbind(pod)
            try:
                await self.core.delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=0)
            except client.ApiException as error:
                if error.status != 404:
                    raise

    # -- faults ----------------------------------------------------------------------------------------------------

    async def set_fault(self, pod: Pod, kind: Fault, parameters: dict[str, float | str] | None) -> None:
        process, now = pod.process, time.time()
        was_running = process.running
        if parameters is None:
            process.heal(kind, now)
        else:
            process.set_fault(kind, parameters, now)
        if was_running and not process.running:
            await self._unbind(pod)
        elif process.running and not was_running:
            await self._bind(pod, pod.port)
        if not process.hung:
            pod.released.set()
        await self._sync_status(pod)

    async def tick(self) -> None:
        """Restarts in a restart loop happen on the model's clock; write them to the pods as they happen."""
        now = time.time()
        for pod in list(self.pods.values()):
            if isinstance(pod.process, TikvStore) and (
                pod.process.next_restart is not None or pod.process.next_crash is not None
            ):
                pod.process.advance(now)
                await self._sync_status(pod)

    async def run_ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await self.tick()
            except Exception:
                log.exception("Tick failed")

    async def heartbeat_node(self) -> None:
        """Report the simulator's Node Ready every 10 s, as a kubelet does: with a controller manager running (node
        mode), node lifecycle would otherwise mark every store pod NotReady and evict it."""
        while True:
            now = rfc3339(time.time())
            ready = {"type": "Ready", "status": "True", "reason": "SimulatorRunning", "message": "the store simulator",
                     "lastHeartbeatTime": now, "lastTransitionTime": now}  # fmt: skip
            try:
                memory = {"memory": NODE_MEMORY}
                await self.core.patch_node_status(
                    NODE_NAME, {"status": {"conditions": [ready], "capacity": memory, "allocatable": memory}}
                )
            except Exception as error:  # an API server outage (tests cause them) must not end the simulator
                log.warning("Node heartbeat failed: %r", error)
            await asyncio.sleep(10)

    # -- kube-state-metrics ----------------------------------------------------------------------------------------

    async def register_kube_state_metrics(self) -> None:
        """A pod of the simulator's own in kube-system, so that Prometheus finds kube-state-metrics like the stores."""
        manifest: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": KUBE_STATE_METRICS_POD, "namespace": "kube-system",
                         "labels": {"app.kubernetes.io/name": "kube-state-metrics"}},
            "spec": {"nodeName": NODE_NAME, "containers": [{
                "name": "kube-state-metrics", "image": "registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.13.0",
                "ports": [{"name": "http", "containerPort": self.control_port, "protocol": "TCP"}]}]},
        }  # fmt: skip
        for _ in range(100):
            try:
                await self._create_when_admitted("kube-system", manifest)
                break
            except client.ApiException as error:
                if error.status == 409:
                    await self.core.delete_namespaced_pod(KUBE_STATE_METRICS_POD, "kube-system", grace_period_seconds=0)
                elif error.status == 404:  # kube-system not there yet
                    await asyncio.sleep(0.2)
                else:
                    raise
        now = rfc3339(time.time())
        status = {"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": now,
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now} for t in
                           ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": "kube-state-metrics", "image": manifest["spec"]["containers"][0]["image"],
                                   "imageID": "", "ready": True, "started": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": now}}}],
        }}  # fmt: skip
        await self.core.patch_namespaced_pod_status(KUBE_STATE_METRICS_POD, "kube-system", status)

    def kube_state_metrics(self) -> str:
        lines = header("kube_pod_status_ready", "gauge", "Describes whether the pod is ready to serve requests.")
        restarts = header("kube_pod_container_status_restarts_total", "counter",
                          "The number of container restarts per container.")  # fmt: skip
        for pod in self.pods.values():
            state = pod.process.pod_state()
            for condition, value in (("true", state.running), ("false", not state.running), ("unknown", False)):
                series = labels(namespace=pod.namespace, pod=pod.name, uid=pod.uid, condition=condition)
                lines.append(f"kube_pod_status_ready{series} {int(value)}")
            series = labels(namespace=pod.namespace, pod=pod.name, uid=pod.uid, container=pod.container)
            restarts.append(f"kube_pod_container_status_restarts_total{series} {state.restarts}")
        return "\n".join(lines + restarts) + "\n"

    def describe(self) -> dict[str, Any]:
        return {
            f"{pod.namespace}/{pod.name}": {
                "cluster": pod.cluster.name,
                "component": pod.component,
                "endpoint": pod.endpoint,
                "faults": {str(k): v for k, v in pod.process.faults.items()},
                "clusterFaults": {str(k): v for k, v in pod.cluster.faults.items()},
                "pdLeader": (leader.name if (leader := pod.cluster.leader()) else None),
            }
            for pod in self.pods.values()
        }


def tidb_labels(tc: str, component: str) -> dict[str, str]:
    """The labels TiDB Operator v1 puts on a component's pods."""
    return {
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": tc,
        "app.kubernetes.io/managed-by": "tidb-operator",
        "app.kubernetes.io/name": "tidb-cluster",
    }


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def build_app(simulator: Simulator) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=simulator.kube_state_metrics(), content_type="text/plain")

    @routes.get("/clusters")
    async def clusters(_: web.Request) -> web.Response:
        return web.json_response(simulator.describe())

    async def put_cluster(request: web.Request, tidb: bool) -> web.Response:
        body: dict[str, Any] = await request.json() if request.can_read_body else {}
        try:
            result = await simulator.create_cluster(
                request.match_info["namespace"], request.match_info["name"], body, tidb=tidb
            )
        except ValueError as problem:
            return error(400, str(problem))
        return web.json_response(result)

    @routes.put("/clusters/{namespace}/{name}")
    async def put_legacy(request: web.Request) -> web.Response:
        return await put_cluster(request, tidb=False)

    @routes.put("/tidbclusters/{namespace}/{name}")
    async def put_tidb(request: web.Request) -> web.Response:
        return await put_cluster(request, tidb=True)

    @routes.delete("/{kind:(clusters|tidbclusters)}/{namespace}/{name}")
    async def delete_cluster(request: web.Request) -> web.Response:
        await simulator.delete_cluster(request.match_info["namespace"], request.match_info["name"])
        return web.json_response({})

    async def fault(request: web.Request, heal: bool) -> web.Response:
        try:
            kind = Fault(request.match_info["kind"])
        except ValueError:
            return error(400, f"unknown fault kind {request.match_info['kind']!r}; one of {[str(f) for f in Fault]}")
        key = (request.match_info["namespace"], request.match_info["name"])
        cluster = simulator.clusters.get(key)
        if cluster is None:
            return error(404, f"no cluster {key[0]}/{key[1]}")
        parameters: dict[str, float | str] | None = None
        if not heal:
            body: dict[str, Any] = await request.json() if request.can_read_body else {}
            try:
                parameters = fault_parameters(kind, body or {})
            except (ValueError, TypeError) as problem:
                return error(400, str(problem))
        pod_name = request.match_info.get("pod")
        if kind in CLUSTER_FAULTS:
            if parameters is None:
                cluster.heal(kind)
            else:
                cluster.set_fault(kind, parameters)
            log.info("Set cluster fault", extra={"cluster": key, "kind": str(kind), "parameters": parameters})
            return web.json_response({"faults": {str(k): v for k, v in cluster.faults.items()}, "at": time.time()})
        if pod_name is None:
            return error(400, f"fault {kind} is a store's: use …/stores/{{pod}}/faults/{kind}")
        pod = simulator.pods.get((key[0], pod_name))
        if pod is None or pod.cluster is not cluster:
            return error(404, f"no pod {pod_name} in cluster {key[0]}/{key[1]}")
        if isinstance(pod.process, PdMember) and kind not in PD_FAULTS:
            return error(400, f"a PD member takes only {sorted(str(f) for f in PD_FAULTS)}")
        await simulator.set_fault(pod, kind, parameters)
        log.info("Set fault", extra={"pod": pod_name, "kind": str(kind), "parameters": parameters})
        return web.json_response({"faults": {str(k): v for k, v in pod.process.faults.items()}, "at": time.time()})

    prefix = "/{kind_of_cluster:(clusters|tidbclusters)}/{namespace}/{name}"

    @routes.put(prefix + "/{what:(stores|pods)}/{pod}/faults/{kind}")
    async def inject(request: web.Request) -> web.Response:
        return await fault(request, heal=False)

    @routes.delete(prefix + "/{what:(stores|pods)}/{pod}/faults/{kind}")
    async def heal(request: web.Request) -> web.Response:
        return await fault(request, heal=True)

    @routes.put(prefix + "/faults/{kind}")
    async def inject_cluster(request: web.Request) -> web.Response:
        return await fault(request, heal=False)

    @routes.delete(prefix + "/faults/{kind}")
    async def heal_cluster(request: web.Request) -> web.Response:
        return await fault(request, heal=True)

    @routes.put(prefix + "/pd-leader")
    async def pd_leader(request: web.Request) -> web.Response:
        cluster = simulator.clusters.get((request.match_info["namespace"], request.match_info["name"]))
        body: dict[str, Any] = await request.json()
        if cluster is None or body.get("pod") not in cluster.pd:
            return error(404, "no such cluster or PD member")
        cluster.preferred_leader = str(body["pod"])
        leader = cluster.leader()
        return web.json_response({"leader": leader.name if leader else None, "at": time.time()})

    app = web.Application()
    app.add_routes(routes)
    return app


def raise_open_files_limit() -> None:
    """Every pod holds a listening socket: lift the soft limit on open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(port: int, kubeconfig: str) -> None:
    raise_open_files_limit()
    await config.load_kube_config(config_file=kubeconfig)
    async with client.ApiClient() as api:
        simulator = Simulator(client.CoreV1Api(api), port)
        await simulator.start()
        runner = web.AppRunner(build_app(simulator), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await simulator.register_kube_state_metrics()
        log.info("Simulator serving on port %d", port)
        await asyncio.gather(simulator.run_ticks(), simulator.heartbeat_node())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args.port, args.kubeconfig))


if __name__ == "__main__":
    main()
