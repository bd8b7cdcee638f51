"""The worst peak-RSS growth the Prometheus bounds allow at their defaults, measured (the README quotes it).

Four Prometheus servers stall answers at the 1 MiB cap until they hold 15 of the 16 MiB buffer budget (4 + 4 + 4 + 3
answers: each Prometheus at most its quarter), while a fifth answers 1 MiB of ``{}`` or ``[]`` (the JSON that parses
largest per byte, about 30 times its size) to four queries, concurrent or one after another. The servers run in this
process: their own send buffers (about 16 MiB) are in the figure too, so it overstates the operator's share.

    PYTHONPATH=. .venv/bin/python scripts/prometheus_worst_memory.py {dict|list} [sequential]
"""

from __future__ import annotations

import asyncio
import sys

from operator_k8s.adapters.prometheus import PrometheusMetrics
from operator_k8s.adapters.prometheus_http import MIB, AnswerLimits
from operator_k8s.domain.observations import QueryResult
from tests.hostile_http import (
    Exchange,
    answering,
    head,
    reset_peak_memory,
    serving,
    serving_many,
    status_memory_kib,
    vector_json,
)
from tests.stackutil import eventually_async

CAP = AnswerLimits().max_bytes
PREFIX = b'{"status":"success","data":{"resultType":"vector","result":[]},"x":['


def padded(unit: bytes) -> bytes:
    body = PREFIX + b",".join([unit] * ((CAP - len(PREFIX) - 10) // (len(unit) + 1))) + b"]}"
    assert len(body) <= CAP
    return body


def stalling(exchange: Exchange) -> None:
    if "query=warm" in exchange.request.target:
        body = vector_json(1)
        exchange.send(head(200, {}, length=len(body)) + body)
        return
    start = b'{"status":"success","data":{"resultType":"vector","result":['
    exchange.send(head(200, {"Content-Type": "application/json"}) + start + b" " * (CAP - len(start)))
    exchange.gone_within(60)


async def main(unit: bytes, sequential: bool) -> None:
    body = padded(unit)
    with serving_many(stalling, 4) as hostile, serving(answering(body)) as target:
        metrics = PrometheusMetrics()  # the defaults

        async def ask(url: str, query: str) -> QueryResult:
            return await metrics.query(url, query, store_label="pod", namespace_label="namespace", timeout=20)

        for url in [target.url] + [server.url for server in hostile]:
            for _ in range(4):  # slots open one per answer
                await ask(url, "warm")
        base = reset_peak_memory()
        stalls = [
            asyncio.create_task(ask(server.url, f"stall{i}"))
            for n, server in enumerate(hostile)
            for i in range(4 if n < 3 else 3)
        ]

        async def filled() -> bool:
            return metrics._memory.used >= 15 * MIB

        await eventually_async(filled, timeout=10, interval=0.05, what="the stalled answers to fill 15 MiB")
        if sequential:
            results = [await ask(target.url, f"padded{i}") for i in range(4)]
        else:
            results = list(await asyncio.gather(*(ask(target.url, f"padded{i}") for i in range(4))))
        peak = status_memory_kib("VmHWM")
        parsed = sum(r.failure is None for r in results)
        print(
            f"{unit.decode()} x {len(body) / MIB:.2f} MiB, {'sequential' if sequential else 'concurrent'}:"
            f" {parsed} of 4 parsed ({[r.error[:60] for r in results if r.failure]}), buffered"
            f" {15} of {metrics._memory.limit // MIB} MiB by stalled answers;"
            f" peak RSS {base // 1024} -> {peak // 1024} MiB (+{(peak - base) // 1024} MiB)"
        )
        for stall in stalls:
            stall.cancel()
        await asyncio.gather(*stalls, return_exceptions=True)
        metrics.close()


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "dict"
    asyncio.run(main({"dict": b"{}", "list": b"[]"}[kind], "sequential" in sys.argv[2:]))
