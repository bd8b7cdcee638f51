"""Authentication to Prometheus against the real thing (devstack/world/secured.py): a Prometheus behind its own TLS and
basic auth, and a Mimir-like gateway demanding a bearer token and a tenant in front of a plain Prometheus.

The credentials directory is laid out as the kubelet lays out a Secret volume (``key -> ..data/key``), and a rotation
is done as the kubelet does it (a new timestamped directory, ``..data`` swapped atomically). What reached the gateway
is read from the gateway's own counters.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.world.secured import SecuredWorld
from operator_k8s.adapters.prometheus import PrometheusMetrics
from operator_k8s.domain.observations import QueryFailure, QueryResult
from operator_k8s.domain.specs import PrometheusAuthSpec

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def world() -> Iterator[SecuredWorld]:
    with SecuredWorld.start() as started:
        yield started


class Credentials:
    """A Secret volume's layout in a temporary directory: ``write`` publishes a new generation of every file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()

    def write(self, files: dict[str, str | Path]) -> None:
        self.generation += 1
        data = self.root / f"..gen_{self.generation}"
        data.mkdir()
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copy(content, data / name)
            else:
                (data / name).write_text(content + "\n")
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")
        (self.root / "..data_tmp").symlink_to(data.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")


@pytest.fixture
def credentials(world: SecuredWorld, tmp_path: Path) -> Credentials:
    made = Credentials(tmp_path / "credentials")
    made.write({
        "password": world.password,
        "wrong-password": "not-" + world.password,
        "token": world.gateway_token_file.read_text().strip(),
        "ca.crt": world.pki.ca_cert,
        "other-ca.crt": world.other_ca,
    })  # fmt: skip
    (tmp_path / "outside-token").write_text(world.gateway_token_file.read_text())
    return made


@pytest.fixture
def metrics(credentials: Credentials) -> Iterator[PrometheusMetrics]:
    adapter = PrometheusMetrics(concurrency=4, credentials_dir=str(credentials.root))
    yield adapter
    adapter.close()


async def ask(metrics: PrometheusMetrics, url: str, auth: dict[str, Any] | PrometheusAuthSpec | None) -> QueryResult:
    spec = PrometheusAuthSpec.model_validate(auth) if isinstance(auth, dict) else auth
    return await metrics.query(
        url, 'up{job="prometheus"}', store_label="pod", namespace_label="namespace", timeout=5, auth=spec
    )


def succeeded(result: QueryResult) -> bool:
    assert result.failure is None, result.error
    return [sample.value for sample in result.samples] == [1.0]


def no_secret_in(result: QueryResult, world: SecuredWorld) -> bool:
    return world.password not in result.error and world.gateway_token_file.read_text().strip() not in result.error


BASIC = {"basicAuth": {"username": "operator", "passwordFile": "password"}, "caFile": "ca.crt"}
BEARER = {"bearerTokenFile": "token", "headers": {"X-Scope-OrgID": "team-a"}}


# -- basic auth and TLS: Prometheus's own --web.config.file --------------------------------------------------------


async def test_basic_auth_over_tls_with_the_ca_bundle(world: SecuredWorld, metrics: PrometheusMetrics) -> None:
    assert succeeded(await ask(metrics, world.secured_url, BASIC))


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({**BASIC, "basicAuth": {"username": "operator", "passwordFile": "wrong-password"}}, "HTTP 401 Unauthorized"),
        ({**BASIC, "basicAuth": {"username": "someone", "passwordFile": "password"}}, "HTTP 401 Unauthorized"),
        ({"caFile": "ca.crt"}, "HTTP 401 Unauthorized"),
        ({**BASIC, "basicAuth": {"username": "operator", "passwordFile": "absent"}}, "passwordFile 'absent' (in "),
    ],
    ids=["wrong-password", "wrong-user", "no-credentials", "missing-password-file"],
)
async def test_basic_auth_refusals_are_clear(
    world: SecuredWorld, metrics: PrometheusMetrics, auth: dict[str, Any], message: str
) -> None:
    result = await ask(metrics, world.secured_url, auth)
    assert result.failure is QueryFailure.ERROR
    assert message in result.error, result.error
    assert no_secret_in(result, world)


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({**BASIC, "caFile": "other-ca.crt"}, "TLS certificate was refused: unable to get local issuer certificate"),
        ({"basicAuth": BASIC["basicAuth"]}, "TLS certificate was refused: unable to get local issuer certificate"),
        ({**BASIC, "caFile": "password"}, "caFile 'password' (in "),
        ({**BASIC, "caFile": "missing.crt"}, "caFile 'missing.crt' (in "),
    ],
    ids=["unknown-ca", "system-cas", "not-a-certificate", "missing-ca"],
)
async def test_the_certificate_is_verified_against_the_ca_file_only(
    world: SecuredWorld, metrics: PrometheusMetrics, auth: dict[str, Any], message: str
) -> None:
    result = await ask(metrics, world.secured_url, auth)
    assert result.failure is QueryFailure.ERROR
    assert message in result.error, result.error
    assert no_secret_in(result, world)


# -- bearer token and tenant: a Mimir-like gateway ----------------------------------------------------------------


async def test_bearer_token_and_tenant_through_the_gateway(world: SecuredWorld, metrics: PrometheusMetrics) -> None:
    before = world.gateway_stats().get("accepted", 0)
    assert succeeded(await ask(metrics, world.gateway_url, BEARER))
    assert world.gateway_stats()["accepted"] == before + 1


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"bearerTokenFile": "token"}, "HTTP 401 Unauthorized: no org id"),
        ({**BEARER, "headers": {"X-Scope-OrgID": "team-b"}}, "HTTP 403 Forbidden: tenant team-b is not allowed"),
        ({**BEARER, "bearerTokenFile": "password"}, "HTTP 401 Unauthorized: missing or invalid bearer token"),
        ({"headers": {"X-Scope-OrgID": "team-a"}}, "HTTP 401 Unauthorized: missing or invalid bearer token"),
        ({**BEARER, "bearerTokenFile": "absent"}, "bearerTokenFile 'absent' (in "),
    ],
    ids=["no-tenant", "wrong-tenant", "wrong-token", "no-token", "missing-token-file"],
)
async def test_gateway_refusals_are_clear(
    world: SecuredWorld, metrics: PrometheusMetrics, auth: dict[str, Any], message: str
) -> None:
    result = await ask(metrics, world.gateway_url, auth)
    assert result.failure is QueryFailure.ERROR
    assert message in result.error, result.error
    assert "check spec.prometheus.auth" in result.error or "(in " in result.error
    assert no_secret_in(result, world)


async def test_a_rotated_token_is_picked_up(
    world: SecuredWorld, metrics: PrometheusMetrics, credentials: Credentials
) -> None:
    old = world.gateway_token_file.read_text()
    try:
        assert succeeded(await ask(metrics, world.gateway_url, BEARER))
        world.gateway_token_file.write_text("rotated-token-1\n")  # the gateway accepts only the new token now
        stale = await ask(metrics, world.gateway_url, BEARER)
        assert "missing or invalid bearer token" in stale.error, stale.error
        credentials.write({"token": "rotated-token-1"})  # the kubelet's way: a new ..data, swapped atomically
        assert succeeded(await ask(metrics, world.gateway_url, BEARER))
        world.gateway_token_file.write_text("rotated-token-2\n")
        (credentials.root / "token").resolve().write_text("rotated-token-2\n")  # rewritten in place
        assert succeeded(await ask(metrics, world.gateway_url, BEARER))
    finally:
        world.gateway_token_file.write_text(old)


# -- nothing outside the credentials directory is ever sent ---------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "path", "message"),
    [
        (None, "OUTSIDE", "must be a relative path without .. segments"),
        (None, "../outside-token", "must be a relative path without .. segments"),
        (lambda root: (root / "escape").symlink_to(root.parent / "outside-token"), "escape", "resolves outside"),
        (lambda root: (root / "up").symlink_to(root.parent), "up/outside-token", "resolves outside"),
    ],
    ids=["absolute", "dot-dot", "symlink-to-file", "symlink-to-directory"],
)
async def test_a_path_out_of_the_directory_is_refused_and_nothing_is_sent(
    world: SecuredWorld, metrics: PrometheusMetrics, credentials: Credentials, setup: Any, path: str, message: str
) -> None:
    """The file outside holds the gateway's valid token: had it been sent, the gateway would have accepted it. The
    API server and the models refuse an absolute path or ``..`` already; the adapter refuses them again (a spec
    stored before those rules, or built without them) and follows symlinks before it opens anything."""
    if setup is not None:
        setup(credentials.root)
    target = str(credentials.root.parent / "outside-token") if path == "OUTSIDE" else path
    auth = PrometheusAuthSpec.model_construct(bearer_token_file=target, headers={"X-Scope-OrgID": "team-a"})
    before = world.gateway_stats()
    result = await ask(metrics, world.gateway_url, auth)
    assert result.failure is QueryFailure.ERROR
    assert f"bearerTokenFile {target!r}" in result.error and message in result.error, result.error
    assert no_secret_in(result, world)
    assert world.gateway_stats() == before, "no request reached the gateway"


async def test_sessions_are_per_url_and_auth_with_the_endpoint_gate_shared(
    world: SecuredWorld, metrics: PrometheusMetrics
) -> None:
    """Two clusters on one gateway with different tenants: each gets its own answer, neither takes the other's."""
    results = [
        await ask(metrics, world.gateway_url, auth)
        for auth in (BEARER, {**BEARER, "headers": {"X-Scope-OrgID": "team-b"}}, BEARER)
    ]
    assert [r.failure for r in results] == [None, QueryFailure.ERROR, None]
