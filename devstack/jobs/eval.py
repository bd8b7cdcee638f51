"""The evaluation: every case of the fault catalogue (``devstack.jobs.faults``) on the real stack, scored.

``python -m devstack eval`` (``make eval``) starts one stack and the operator as a real process (evidence and
diagnosis on, as shipped) and runs the cases in a few parallel lanes. Each case is isolated: a namespace of its own
(``ev<run>-<case>``), a TidbCluster ``tc`` of 3 TiKV and 3 PD pods in the store world (PD v8.5.5's metrics,
``PD_VERSION``; PD's store timings shortened: heartbeat 1 s, disconnected after 3 s), and a MonitoredCluster ``tc``
made from ``deploy/examples/tikv-cluster.yaml`` with evaluation timings (interval 1 s, ``for`` 1 s, 5 s rate
windows). A case:

1. creates all that and waits until the cluster is ``Healthy=True`` (a fault "there before monitoring starts" is
   injected first and the MonitoredCluster created after it);
2. does its actions on the simulator, each waiting (bounded) for the PromQL condition that shows it in the data;
3. waits, bounded by ``CASE_SECONDS``, until every expected ticket is open in Postgres, every opened ticket has its
   evidence stored (a cluster-level one may have none: ``EVIDENCE_GRACE`` after it opened it is taken as it is), and
   the operator has checked the cluster ``OBSERVE_SECONDS`` after the last action was in the data (its own
   ``operator_k8s_last_check_timestamp_seconds``), so a ticket that opens late is seen too;
4. reads the tickets that opened in its namespace and each one's diagnosis (``ticket_evidence.findings``) from
   Postgres, scores them (``devstack.jobs.scoring``, pure), and deletes what it created.

It prints one line per case with the elapsed time, then writes ``.eval/results.json`` (every case, every ticket, the
summary) and ``.eval/table.md`` (the summary, per fault, per case). The exit status is 0 whatever the scores: the
figures are the product; ``--strict`` fails the run when a target is not met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devstack.host.paths import REPO_ROOT
from devstack.host.processes import Process
from devstack.jobs import faults, scoring
from devstack.jobs.faults import Action, Case
from devstack.jobs.scoring import CaseScore, Observed
from devstack.world.operator import operator_process
from devstack.world.stack import Stack

TC = "tc"
TIMINGS = {"storeHeartbeatSeconds": 1, "storeDisconnectSeconds": 3, "maxStoreDownSeconds": 3600}
"""PD's store timings, shortened: a silent store is disconnected after 3 s (upstream 20 s), never down."""
PD_VERSION = "v8.5.5"
"""PD's metrics as of v8.5.5, which name the store each state counts (``pd_cluster_status{type, store}``), as the demo
and tests/e2e/test_diagnosis.py run it. An older PD exports counts only: its pdStores ticket cannot name the store, so
a hung store (seen on that ticket alone) is then Unknown."""
EXAMPLE = REPO_ROOT / "deploy" / "examples" / "tikv-cluster.yaml"
HEALTHY_SECONDS = 90.0
EVIDENCE_SECONDS = 60.0
"""How long an action may take to show in Prometheus."""
CASE_SECONDS = 90.0
"""How long a case may take, from its first action to every expected ticket diagnosed."""
OBSERVE_SECONDS = 8.0
"""Checks that must follow the last action's evidence: the 5 s rate window and a few cycles."""
EVIDENCE_GRACE = 6.0
"""How long after it opened a cluster-level ticket may still get evidence (the operator's bound is 5 s)."""
POLL_SECONDS = 0.5
DEFAULT_OUT = REPO_ROOT / ".eval"
DEFAULT_LANES = 3
TICKETS_SQL = """
SELECT t.invariant, t.store, t.state, t.opened_at, e.gathered_at, e.findings
FROM tickets t LEFT JOIN ticket_evidence e ON e.ticket_id = t.id
WHERE t.namespace = $1 AND t.opened_at IS NOT NULL
ORDER BY t.id
"""


def _log(message: str) -> None:
    print(f"[eval] {message}", flush=True)


def _poll(probe: Callable[[], bool], timeout: float) -> bool:
    """Poll ``probe`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(POLL_SECONDS)
    return False


# -- what a case creates ---------------------------------------------------------------------------------------------


def monitored_cluster(stack: Stack, namespace: str, stores: int) -> dict[str, Any]:
    """The example MonitoredCluster for TidbCluster ``tc``, pointed at the stack, with evaluation timings."""
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": TC, "namespace": namespace}
    spec = body["spec"]
    spec["interval"] = "1s"
    spec["stores"]["expected"] = stores
    for selector in (spec["stores"]["selector"], spec["pd"]["selector"]):
        selector["matchLabels"]["app.kubernetes.io/instance"] = TC
    spec["prometheus"].update(url=stack.prometheus_url, rateWindow="5s", timeout="2s")
    invariants = spec["invariants"]
    for name in ("storesReady", "latency", "diskUsage", "criticalErrors", "writeStall", "pdStores", "pdRegions"):
        invariants.setdefault(name, {}).update({"for": "1s", "clearFor": "2s"})
    invariants["writeStall"]["window"] = "5s"
    invariants.pop("custom", None)
    return body


class Lane:
    """Runs cases one after another: its own Postgres connection and event loop, its own namespaces."""

    def __init__(self, stack: Stack, operator: Process, run_id: str) -> None:
        self.stack = stack
        self.operator = operator
        self.run_id = run_id
        self.loop = asyncio.new_event_loop()
        self.connection: asyncpg.Connection | None = None

    def close(self) -> None:
        if self.connection is not None:
            self.loop.run_until_complete(self.connection.close())
        self.loop.close()

    # -- the stack's parts --

    def simulator(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self.stack.simulator_url + path, data=json.dumps(body or {}).encode(),
                                         method=method, headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def prometheus(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.stack.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            result: list[dict[str, Any]] = json.loads(response.read())["data"]["result"]
            return result

    def tickets(self, namespace: str) -> list[dict[str, Any]]:
        async def fetch() -> list[dict[str, Any]]:
            if self.connection is None:
                self.connection = await asyncpg.connect(self.stack.postgres_dsn)
            return [dict(r) for r in await self.connection.fetch(TICKETS_SQL, namespace)]

        return self.loop.run_until_complete(fetch())

    def last_check(self, namespace: str) -> float:
        """When the operator last ended a check cycle of the case's cluster (its own metric; 0 if never)."""
        assert self.operator.env is not None
        url = f"http://127.0.0.1:{self.operator.env['OPERATOR_K8S_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (sample.name == "operator_k8s_last_check_timestamp_seconds"
                        and sample.labels == {"namespace": namespace, "cluster": TC}):  # fmt: skip
                    return float(sample.value)
        return 0.0

    def healthy(self, namespace: str) -> bool:
        body = json.loads(self.stack.kubectl("get", "mc", TC, "-n", namespace, "-o", "json").stdout)
        conditions = (body.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Healthy" and c["status"] == "True" for c in conditions)

    # -- a case --

    def namespace_of(self, case: Case) -> str:
        return f"ev{self.run_id}-{re.sub(r'[^a-z0-9]+', '-', case.name)}"[:63].rstrip("-")

    def act(self, namespace: str, action: Action) -> float:
        """Do ``action``; return when its evidence showed in Prometheus (or, without one, when it was done)."""
        since = time.time()
        base = f"/tidbclusters/{namespace}/{TC}"
        if action.pd_leader is not None:
            self.simulator("PUT", f"{base}/pd-leader", {"pod": f"{TC}-pd-{action.pd_leader}"})
        elif action.scale_to is not None:
            self.simulator(
                "PUT", base, {"stores": action.scale_to, "pd": 3, "timings": TIMINGS, "pdVersion": PD_VERSION}
            )
        elif action.store is None:
            self.simulator("DELETE" if action.heal else "PUT", f"{base}/faults/{action.fault}", action.body)
        elif action.fault:
            self.simulator("DELETE" if action.heal else "PUT",
                           f"{base}/stores/{TC}-tikv-{action.store}/faults/{action.fault}", action.body)  # fmt: skip
        if not action.evidence:
            return since
        store = action.store if action.store is not None else 0
        promql = action.evidence.format(sel=f'namespace="{namespace}",pod="{TC}-tikv-{store}"', ns=namespace,
                                        since=f"{since:.3f}")  # fmt: skip
        if not _poll(lambda: bool(self.prometheus(promql)), EVIDENCE_SECONDS):
            _log(f"{namespace}: {action.fault or 'action'} did not show in the data: {promql}")
        return time.time()

    def run(self, case: Case) -> tuple[CaseScore, list[dict[str, Any]]]:
        namespace = self.namespace_of(case)
        started = time.monotonic()
        self.stack.kubectl("create", "namespace", namespace)
        try:
            self.simulator("PUT", f"/tidbclusters/{namespace}/{TC}", {"stores": case.stores, "pd": 3,
                                                                       "timings": TIMINGS,
                                                                       "pdVersion": PD_VERSION})  # fmt: skip
            manifest = json.dumps(monitored_cluster(self.stack, namespace, case.stores))
            done = time.time()
            if case.before_monitoring:
                for action in case.actions:
                    done = self.act(namespace, action)
                self.stack.kubectl("apply", "-f", "-", input_text=manifest)
            else:
                self.stack.kubectl("apply", "-f", "-", input_text=manifest)
                if not _poll(lambda: self.healthy(namespace), HEALTHY_SECONDS):
                    _log(f"{case.name}: the cluster never became Healthy; running the case anyway")
                for action in case.actions:
                    done = self.act(namespace, action)
            rows: list[dict[str, Any]] = []

            def finished() -> bool:
                rows[:] = self.tickets(namespace)
                opened = {(r["invariant"], _store_index(r["store"])) for r in rows}
                expected = {(e.invariant, e.store) for e in case.expected}
                now = time.time()
                explained = all(r["gathered_at"] is not None or (r["store"] == "cluster"
                                and now - r["opened_at"].timestamp() > EVIDENCE_GRACE) for r in rows)  # fmt: skip
                return expected <= opened and explained and self.last_check(namespace) >= done + OBSERVE_SECONDS

            settled = _poll(finished, CASE_SECONDS)
            rows = self.tickets(namespace)
            observed = [_observed(r) for r in rows]
            return scoring.score_case(case, observed, settled=settled, seconds=time.monotonic() - started), rows
        finally:
            self.stack.kubectl("delete", "mc", TC, "-n", namespace, "--wait=false", check=False)
            self.simulator("DELETE", f"/tidbclusters/{namespace}/{TC}")
            self.stack.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _store_index(store: str) -> int | None:
    return None if store == "cluster" else int(store.rsplit("-", 1)[1])


def _observed(row: dict[str, Any]) -> Observed:
    findings = row["findings"]
    if isinstance(findings, str):
        findings = json.loads(findings)
    gathered: datetime | None = row["gathered_at"]
    seconds = None if gathered is None else (gathered - row["opened_at"]).total_seconds()
    return Observed(row["invariant"], _store_index(row["store"]), tuple(f["rule"] for f in findings or []), seconds)


# -- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    scores: list[CaseScore]
    tickets: dict[str, list[dict[str, Any]]]
    seconds: float

    @property
    def summary(self) -> scoring.Summary:
        seconds = [o.evidence_seconds for rows in self.tickets.values() for o in map(_observed, rows)
                   if o.evidence_seconds is not None]  # fmt: skip
        return scoring.summarize(self.scores, seconds)

    def markdown(self) -> str:
        return (f"{scoring.summary_markdown(self.summary)}\n{scoring.by_fault_markdown(self.scores)}\n"
                f"{scoring.cases_markdown(self.scores)}")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        def plain(row: dict[str, Any]) -> dict[str, Any]:
            return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}

        return {
            "seconds": self.seconds,
            "summary": self.summary.to_json(),
            "cases": [s.to_json() | {"tickets": [plain(r) for r in self.tickets.get(s.name, [])]}
                      for s in self.scores],
        }  # fmt: skip


def run(stack: Stack, operator: Process, cases: tuple[Case, ...], *, lanes: int = DEFAULT_LANES) -> Result:
    """Every case on ``stack`` with ``operator`` running, ``lanes`` at a time; a line per case as it ends."""
    started = time.monotonic()
    run_id = f"{int(time.time()) % 100000:05d}"
    queue = list(cases)
    lock = threading.Lock()
    scores: dict[str, CaseScore] = {}
    tickets: dict[str, list[dict[str, Any]]] = {}
    _log(f"Running {len(cases)} cases in {lanes} lanes")

    def drain(lane: Lane) -> None:
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    case = queue.pop(0)
                try:
                    score, rows = lane.run(case)
                except Exception as error:  # one case's failure is its own, not the run's
                    _log(f"{case.name}: failed: {error!r}")
                    score, rows = scoring.score_case(case, [], settled=False), []
                with lock:
                    scores[case.name], tickets[case.name] = score, rows
                    done = len(scores)
                outcome = _outcome(case, score)
                extra = "" if score.settled else " (timed out)"
                _log(f"{done:>3}/{len(cases)} {case.name}: {outcome}{extra} ({score.seconds:.1f}s; "
                     f"elapsed {time.monotonic() - started:.0f}s)")  # fmt: skip
        finally:
            lane.close()

    with ThreadPoolExecutor(max_workers=lanes) as pool:
        for future in [pool.submit(drain, Lane(stack, operator, run_id)) for _ in range(lanes)]:
            future.result()
    ordered = [scores[c.name] for c in cases if c.name in scores]
    return Result(ordered, tickets, time.monotonic() - started)


def _outcome(case: Case, score: CaseScore) -> str:
    if case.control:
        return "silent" if not score.opened and not score.diagnoses else f"NOT silent: {score.opened}"
    return ", ".join(f"{j.expected} → {j.top or 'no ticket'}: {j.outcome}" for j in score.judged)


def write(result: Result, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results, table = out / "results.json", out / "table.md"
    results.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    table.write_text(result.markdown() + f"\n{len(result.scores)} cases in {result.seconds:.0f}s\n")
    return results, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--lanes", type=int, default=DEFAULT_LANES, help="cases running at once")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results.json and table.md go")
    parser.add_argument("--cases", nargs="*", default=None, help="case or fault names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is not met")
    args = parser.parse_args(argv)
    cases = faults.select(args.cases) if args.cases else faults.CASES
    if args.list:
        for case in cases:
            expected = ", ".join(f"{e.invariant}/{'cluster' if e.store is None else e.store}"
                                 + (f" → {e.cause}" if e.cause else "") for e in case.expected)  # fmt: skip
            print(f"{case.name:<32} {case.title}: {expected or 'no ticket'}")
        return 0
    with Stack.start() as stack:
        try:
            operator = operator_process(stack, "operator-eval.log")
            if not _poll(lambda: _healthz(operator), 60):
                raise RuntimeError("the operator did not become healthy")
            result = run(stack, operator, cases, lanes=args.lanes)
        except BaseException:
            print(stack.logs())
            raise
    results, table = write(result, args.out)
    print()
    print(result.markdown())
    print(f"{len(result.scores)} cases in {result.seconds:.0f}s; written to {results} and {table}")
    return 1 if args.strict and not all(result.summary.targets().values()) else 0


def _healthz(operator: Process) -> bool:
    assert operator.env is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.env['OPERATOR_K8S_HEALTH_PORT']}/healthz", timeout=5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
