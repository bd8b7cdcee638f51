"""A TiKV-like store simulator: Prometheus metrics per store, store Pods in the API server, fault injection.

Control API (JSON over HTTP on 127.0.0.1):

- ``PUT /clusters/{namespace}/{name}`` ``{"stores": 3, "labels": {...}}`` creates the store Pods (``{name}-{i}``),
  Ready, and starts exporting their series.
- ``DELETE /clusters/{namespace}/{name}`` deletes them.
- ``PUT /clusters/{namespace}/{name}/stores/{pod}/faults/{kind}`` injects a fault: ``down`` (Pod not Ready, no series),
  ``latency`` (``{"seconds": 0.8}``), ``disk`` (``{"percent": 95}``).
- ``DELETE .../faults/{kind}`` heals it; ``GET /clusters`` shows the state.
- ``GET /metrics`` is what Prometheus scrapes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client, config

# Upper bounds of the latency histogram's buckets, as TiKV exports them (powers of two from 0.5 ms).
BUCKETS = [0.0005 * 2**i for i in range(16)]
REQUESTS_PER_SECOND = 200.0
HEALTHY_LATENCY_SECONDS = 0.002
CAPACITY_BYTES = 100 * 2**30
HEALTHY_DISK_PERCENT = 40.0
NODE_NAME = "devstack-node"

log = logging.getLogger("simulator")


@dataclass
class Store:
    """One simulated store: its histogram counters and the faults injected into it."""

    namespace: str
    pod: str
    faults: dict[str, float] = field(default_factory=dict)
    bucket_counts: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))
    count: float = 0.0
    total_seconds: float = 0.0

    @property
    def down(self) -> bool:
        return "down" in self.faults

    def latency_seconds(self) -> float:
        return self.faults.get("latency", HEALTHY_LATENCY_SECONDS)

    def disk_percent(self) -> float:
        return self.faults.get("disk", HEALTHY_DISK_PERCENT)

    def serve_requests(self, elapsed: float) -> None:
        """Account ``elapsed`` seconds of traffic at the store's current latency."""
        if self.down:
            return
        requests = REQUESTS_PER_SECOND * elapsed
        latency = self.latency_seconds()
        for index, upper in enumerate(BUCKETS):
            if latency <= upper:
                self.bucket_counts[index] += requests
        self.count += requests
        self.total_seconds += requests * latency

    def exposition(self) -> list[str]:
        labels = f'namespace="{self.namespace}",pod="{self.pod}"'
        # What kube-state-metrics would say about the pod: present even while the store itself is down.
        readiness = [f'kube_pod_status_ready{{{labels},condition="true"}} {0 if self.down else 1}']
        if self.down:
            return readiness
        lines = [
            f'tikv_grpc_msg_duration_seconds_bucket{{{labels},type="kv_get",le="{upper:g}"}} {count:.3f}'
            for upper, count in zip(BUCKETS, self.bucket_counts, strict=True)
        ]
        lines.append(f'tikv_grpc_msg_duration_seconds_bucket{{{labels},type="kv_get",le="+Inf"}} {self.count:.3f}')
        lines.append(f'tikv_grpc_msg_duration_seconds_count{{{labels},type="kv_get"}} {self.count:.3f}')
        lines.append(f'tikv_grpc_msg_duration_seconds_sum{{{labels},type="kv_get"}} {self.total_seconds:.6f}')
        used = CAPACITY_BYTES * self.disk_percent() / 100
        for kind, value in (("capacity", CAPACITY_BYTES), ("used", used), ("available", CAPACITY_BYTES - used)):
            lines.append(f'tikv_store_size_bytes{{{labels},type="{kind}"}} {value:.0f}')
        return readiness + lines


class Simulator:
    def __init__(self, core: Any) -> None:
        self.core = core
        self.stores: dict[tuple[str, str], Store] = {}
        self.clusters: dict[tuple[str, str], list[str]] = {}
        self.last_tick = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        for store in self.stores.values():
            store.serve_requests(now - self.last_tick)
        self.last_tick = now

    async def set_ready(self, store: Store) -> None:
        ready = "False" if store.down else "True"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": "Ready", "status": ready, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                ],
                "containerStatuses": [
                    {
                        "name": "tikv",
                        "image": "tikv/tikv:simulated",
                        "imageID": "",
                        "ready": not store.down,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}}
                        if not store.down
                        else {"waiting": {"reason": "Simulated"}},
                    }
                ],
            }
        }
        await self.core.patch_namespaced_pod_status(store.pod, store.namespace, body)

    async def create_cluster(self, namespace: str, name: str, stores: int, labels: dict[str, str]) -> list[str]:
        pods = [f"{name}-{index}" for index in range(stores)]
        await asyncio.gather(*(self._create_pod(namespace, pod, labels) for pod in pods))
        self.clusters[(namespace, name)] = pods
        log.info("Created store pods", extra={"namespace": namespace, "pods": pods})
        return pods

    async def _create_pod(self, namespace: str, pod: str, labels: dict[str, str]) -> None:
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": NODE_NAME, "containers": [{"name": "tikv", "image": "tikv/tikv:simulated"}]},
        }
        try:
            await self.core.create_namespaced_pod(namespace, manifest)
        except client.ApiException as error:
            if error.status != 409:
                raise
        store = self.stores.setdefault((namespace, pod), Store(namespace, pod))
        await self.set_ready(store)

    async def delete_cluster(self, namespace: str, name: str) -> None:
        for pod in self.clusters.pop((namespace, name), []):
            self.stores.pop((namespace, pod), None)
            try:
                await self.core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)
            except client.ApiException as error:
                if error.status != 404:
                    raise

    async def set_fault(self, namespace: str, pod: str, kind: str, value: float | None) -> Store:
        store = self.stores[(namespace, pod)]
        was_down = store.down
        if value is None:
            store.faults.pop(kind, None)
        else:
            store.faults[kind] = value
        if store.down != was_down:
            await self.set_ready(store)
        return store

    def metrics(self) -> str:
        self.tick()
        lines = [
            "# TYPE tikv_grpc_msg_duration_seconds histogram",
            "# TYPE tikv_store_size_bytes gauge",
            "# TYPE kube_pod_status_ready gauge",
        ]
        for store in self.stores.values():
            lines += store.exposition()
        return "\n".join(lines) + "\n"


FAULT_VALUE_KEYS = {"down": None, "latency": "seconds", "disk": "percent"}


def build_app(simulator: Simulator) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=simulator.metrics(), content_type="text/plain")

    @routes.get("/clusters")
    async def clusters(_: web.Request) -> web.Response:
        body = {f"{ns}/{pod}": {"faults": s.faults} for (ns, pod), s in simulator.stores.items()}
        return web.json_response(body)

    @routes.put("/clusters/{namespace}/{name}")
    async def put_cluster(request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        stores = int(body.get("stores", 3))
        labels = dict(body.get("labels") or {"app": request.match_info["name"]})
        pods = await simulator.create_cluster(
            request.match_info["namespace"], request.match_info["name"], stores, labels
        )
        return web.json_response({"pods": pods})

    @routes.delete("/clusters/{namespace}/{name}")
    async def delete_cluster(request: web.Request) -> web.Response:
        await simulator.delete_cluster(request.match_info["namespace"], request.match_info["name"])
        return web.json_response({})

    async def fault(request: web.Request, heal: bool) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in FAULT_VALUE_KEYS:
            return web.json_response(
                {"error": f"unknown fault kind {kind!r}; one of {sorted(FAULT_VALUE_KEYS)}"}, status=400
            )
        key = (request.match_info["namespace"], request.match_info["pod"])
        if key not in simulator.stores:
            return web.json_response({"error": f"no store {key[0]}/{key[1]}"}, status=404)
        value: float | None = None
        if not heal:
            body: dict[str, Any] = await request.json() if request.can_read_body else {}
            value_key = FAULT_VALUE_KEYS[kind]
            value = 1.0 if value_key is None else float(body[value_key])
        store = await simulator.set_fault(key[0], key[1], kind, value)
        log.info("Set fault", extra={"pod": key[1], "kind": kind, "value": value})
        return web.json_response({"faults": store.faults, "at": time.time()})

    @routes.put("/clusters/{namespace}/{name}/stores/{pod}/faults/{kind}")
    async def inject(request: web.Request) -> web.Response:
        return await fault(request, heal=False)

    @routes.delete("/clusters/{namespace}/{name}/stores/{pod}/faults/{kind}")
    async def heal(request: web.Request) -> web.Response:
        return await fault(request, heal=True)

    app = web.Application()
    app.add_routes(routes)
    return app


async def serve(port: int, kubeconfig: str) -> None:
    await config.load_kube_config(config_file=kubeconfig)
    async with client.ApiClient() as api:
        simulator = Simulator(client.CoreV1Api(api))
        runner = web.AppRunner(build_app(simulator), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        log.info("Simulator serving", extra={"port": port})
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args.port, args.kubeconfig))


if __name__ == "__main__":
    main()
