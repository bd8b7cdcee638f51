"""Review findings (branch review-stop22), each a strict xfail until fixed: the test states the behaviour the README
or the issue promises, and fails on today's code."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from operator_k8s.domain.receivers import Route, receivers_for
from operator_k8s.domain.vocabulary import Severity
from operator_k8s.settings import Settings
from tests.unit.fakes import FakeLeases
from tests.unit.test_shards import Clock, coordinator, periods


@pytest.mark.xfail(strict=True, reason="review-stop22: NotIn/DoesNotExist selectors match the '{}' of old tickets")
def test_a_ticket_recorded_before_labels_were_stored_matches_only_routes_without_a_selector() -> None:
    """README, "Routing by labels": tickets recorded before migration 0007 have no labels and only routes without a
    selector match them. A catch-all route for unlabelled clusters (DoesNotExist) takes them all instead, so the
    resolution of a payments ticket opened before the upgrade goes to the general on-call."""
    route = Route.model_validate(
        {
            "receivers": ["general"],
            "clusterSelector": {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]},
        }
    )
    names = receivers_for(
        [route], namespace="tikv-prod", cluster="payments", invariant="diskUsage", severity=Severity.CRITICAL,
        cluster_labels={},
    )  # fmt: skip
    assert names == []


@pytest.mark.xfail(strict=True, reason="review-stop22: a renew period as long as the lease is accepted")
def test_a_renew_period_no_shorter_than_the_lease_is_refused_at_start() -> None:
    """valid_until = write + lease - renew: with renew >= lease a replica never owns a shard, and says nothing."""
    with pytest.raises(ValidationError):
        Settings(
            database_dsn="postgresql://u@h/d",
            sharding="leases",
            lease_namespace="ops",
            shard_lease_seconds=3,
            shard_renew_seconds=5,
        )


@pytest.mark.xfail(strict=True, reason="review-stop22: an API server outage longer than the lease moves shards")
async def test_an_api_server_outage_longer_than_the_lease_moves_no_shard_between_live_replicas() -> None:
    """Both replicas live through a 30 s API server outage. The one whose last LIST came after the other's last
    renewal sees every Lease of the other unchanged for longer than its duration, takes the other's shards at the
    first period back (the other's renewals get 409s), and gives them back a period later: two hand-overs, two cache
    drops and skewed schedules for nothing."""
    leases, clock = FakeLeases(), Clock()
    taken: list[set[int]] = []
    a, b = coordinator(leases, "a", clock, taken), coordinator(leases, "b", clock, taken)
    await periods(clock, [a, b], 4)
    await a.step()  # a's last LIST before the outage comes after b's last renewal
    before, held_by_b = leases.holders(), set(b.held())
    taken.clear()
    clock.now += 30  # the API server away: nothing listed or written
    for _ in range(3):
        await a.step()
        await b.step()
        clock.now += 2
    assert leases.holders() == before
    assert set(b.held()) == held_by_b
    assert taken == []
