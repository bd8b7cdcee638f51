"""Credentials for Prometheus from files under one directory: what may be read, when it is read again, and what a
message may show. Files in a temporary directory; no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_api_client.exceptions import PrometheusApiClientException

from operator_k8s.adapters.prometheus import (
    REDACTED,
    Authorization,
    CredentialError,
    CredentialFiles,
    PrometheusCredentials,
    PrometheusMetrics,
    _status_message,
    basic_authorization,
)
from operator_k8s.domain.observations import QueryFailure
from operator_k8s.domain.specs import PrometheusAuthSpec
from operator_k8s.service import Monitor
from operator_k8s.settings import SettingsError, load_settings
from tests.unit.builders import at
from tests.unit.cycles import PODS, REF, SPEC, condition
from tests.unit.fakes import FakeMetrics, FakeMirror, FakeStore

SECRET = "s3cr3t-token-value"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """A credentials directory laid out as the kubelet lays out a Secret volume (``key -> ..data/key``, ``..data ->
    ..<timestamp>``), with a secret outside it."""
    root = tmp_path / "credentials"
    (root / "..2026_01_01").mkdir(parents=True)
    (root / "..2026_01_01" / "token").write_text(SECRET + "\n")
    (root / "..data").symlink_to("..2026_01_01")
    (root / "token").symlink_to("..data/token")
    (tmp_path / "outside").write_text("the operator's own service-account token")
    return root


def files(directory: Path) -> CredentialFiles:
    return CredentialFiles(str(directory))


def test_a_secret_volume_layout_resolves_inside_the_directory(directory: Path) -> None:
    assert files(directory).read("bearerTokenFile", "token") == SECRET
    assert files(directory).read("bearerTokenFile", "..data/token") == SECRET


@pytest.mark.parametrize(
    ("make", "relative", "message"),
    [
        (None, "/etc/passwd", "must be a relative path without .. segments"),
        (None, "../outside", "must be a relative path without .. segments"),
        (None, "a/../../outside", "must be a relative path without .. segments"),
        (lambda d: (d / "escape").symlink_to(d.parent / "outside"), "escape", "resolves outside the credentials"),
        (lambda d: (d / "up").symlink_to(d.parent), "up/outside", "resolves outside the credentials"),
        (lambda d: (d / "root").symlink_to("/"), "root/etc/passwd", "resolves outside the credentials"),
        (None, ".", "names the credentials directory itself"),
    ],
    ids=["absolute", "parent", "parent-inside", "symlink-to-file", "symlink-to-parent", "symlink-to-root", "itself"],
)
def test_nothing_outside_the_directory_is_ever_opened(
    directory: Path, make: object, relative: str, message: str
) -> None:
    if callable(make):
        make(directory)
    with pytest.raises(CredentialError, match=message) as caught:
        files(directory).read("bearerTokenFile", relative)
    assert "bearerTokenFile" in str(caught.value) and repr(relative) in str(caught.value)
    assert "service-account" not in str(caught.value)


def test_a_directory_that_is_itself_a_symlink_still_confines(directory: Path, tmp_path: Path) -> None:
    link = tmp_path / "mounted"
    link.symlink_to(directory)
    assert files(link).read("bearerTokenFile", "token") == SECRET
    (directory / "escape").symlink_to(tmp_path / "outside")
    with pytest.raises(CredentialError, match="resolves outside"):
        files(link).read("bearerTokenFile", "escape")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b" \n", "is empty"), (b"\xff\xfe", "is not UTF-8 text"), (b"x" * 20000, "larger than")],
)
def test_unusable_files_are_named_never_shown(directory: Path, content: bytes, message: str) -> None:
    (directory / "bad").write_bytes(content)
    with pytest.raises(CredentialError, match=message) as caught:
        files(directory).read("basicAuth.passwordFile", "bad")
    assert str(caught.value).startswith(f"basicAuth.passwordFile 'bad' (in {directory})")


def test_missing_files_and_directories_are_named(directory: Path) -> None:
    with pytest.raises(CredentialError, match=r"caFile 'ca.crt' \(in .*\) cannot be read: No such file"):
        files(directory).read("caFile", "ca.crt")
    (directory / "sub").mkdir()
    with pytest.raises(CredentialError, match="is not a regular file"):
        files(directory).read("caFile", "sub")


def test_a_file_is_read_again_only_when_it_changes(directory: Path) -> None:
    reader = files(directory)
    path = directory / "..2026_01_01" / "token"
    assert reader.read("bearerTokenFile", "token") == SECRET
    before = path.stat()
    path.write_text(SECRET.upper() + "\n")  # same size, same inode: only the modification time tells
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert reader.read("bearerTokenFile", "token") == SECRET, "unchanged by its stat: served from memory"
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert reader.read("bearerTokenFile", "token") == SECRET.upper()


def test_a_rotated_secret_volume_is_picked_up(directory: Path) -> None:
    """The kubelet writes the new files in a new directory and swaps ``..data`` atomically."""
    reader = files(directory)
    assert reader.read("bearerTokenFile", "token") == SECRET
    (directory / "..2026_01_02").mkdir()
    (directory / "..2026_01_02" / "token").write_text("rotated\n")
    (directory / "..data_tmp").symlink_to("..2026_01_02")
    (directory / "..data_tmp").rename(directory / "..data")
    assert reader.read("bearerTokenFile", "token") == "rotated"


def test_basic_authorization_is_rfc_7617() -> None:
    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert basic_authorization("test", "123£") == "Basic dGVzdDoxMjPCow=="  # UTF-8, the RFC's own example


def test_credentials_build_the_authorization_and_headers(directory: Path) -> None:
    (directory / "password").write_text("pa:ss\n")
    bearer = PrometheusCredentials(
        PrometheusAuthSpec.model_validate({"bearerTokenFile": "token", "headers": {"X-Scope-OrgID": "team-a"}}),
        files(directory),
    )
    assert bearer.authorization() == Authorization(f"Bearer {SECRET}", (SECRET,))
    assert bearer.headers == {"X-Scope-OrgID": "team-a"}
    assert bearer.verify() is True
    assert SECRET not in repr(bearer)
    basic = PrometheusCredentials(
        PrometheusAuthSpec.model_validate({"basicAuth": {"username": "op", "passwordFile": "password"}}),
        files(directory),
    )
    assert basic.authorization().value == basic_authorization("op", "pa:ss")
    assert PrometheusCredentials(None, files(directory)).authorization() == Authorization(None)


def test_a_token_a_header_cannot_carry_is_refused_unshown(directory: Path) -> None:
    (directory / "two-lines").write_text("abc\nX-Injected: 1\n")
    credentials = PrometheusCredentials(PrometheusAuthSpec(bearer_token_file="two-lines"), files(directory))
    with pytest.raises(CredentialError, match="cannot carry") as caught:
        credentials.authorization()
    assert "Injected" not in str(caught.value)


def test_ca_file_must_hold_a_certificate(directory: Path) -> None:
    (directory / "ca.crt").write_text("not a certificate\n")
    credentials = PrometheusCredentials(PrometheusAuthSpec(ca_file="ca.crt"), files(directory))
    with pytest.raises(CredentialError, match=r"caFile 'ca\.crt' .* holds no PEM certificate"):
        credentials.verify()
    (directory / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert credentials.verify() == os.path.join(os.path.realpath(directory), "ca.crt")


def test_redaction_covers_every_spelling_of_a_secret() -> None:
    secret = "a'b\\c£"
    authorization = Authorization(f"Bearer {secret}", (secret,))
    for spelling in (secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]):
        assert authorization.redact(f"echoed {spelling}!") == f"echoed {REDACTED}!"


@pytest.mark.parametrize(
    ("code", "body", "message"),
    [
        (401, b"Unauthorized\n", "Prometheus refused the query with HTTP 401 Unauthorized: Unauthorized (check"),
        (403, b"tenant b is not allowed\n", "HTTP 403 Forbidden: tenant b is not allowed (check spec.prometheus.auth)"),
        (401, b"", "HTTP 401 Unauthorized: no reason given"),
        (400, b'{"error":"parse error"}', 'Prometheus answered HTTP 400: {"error":"parse error"}'),
    ],
)
def test_http_refusals_read_clearly(code: int, body: bytes, message: str) -> None:
    assert message in _status_message(PrometheusApiClientException(f"HTTP Status Code {code} ({body!r})"))


async def test_an_unusable_credential_is_a_failed_query_never_an_exception(directory: Path) -> None:
    metrics = PrometheusMetrics(concurrency=2, credentials_dir=str(directory))
    try:
        for auth, message in [
            (PrometheusAuthSpec(bearer_token_file="missing"), "bearerTokenFile 'missing'"),
            (PrometheusAuthSpec.model_construct(bearer_token_file="/etc/passwd"), "must be a relative path"),
            (PrometheusAuthSpec(ca_file="token"), "holds no PEM certificate"),
        ]:
            result = await metrics.query(
                "http://127.0.0.1:9", "up", store_label="pod", namespace_label="namespace", timeout=1, auth=auth
            )
            assert (result.failure, message in result.error) == (QueryFailure.ERROR, True), result.error
            assert SECRET not in result.error
    finally:
        metrics.close()


async def test_the_service_passes_the_clusters_auth_to_the_metrics_source() -> None:
    metrics = FakeMetrics()
    monitor = Monitor(store=FakeStore(), metrics=metrics, mirror=FakeMirror())
    spec = {**SPEC, "prometheus": {"url": "https://p:9090", "auth": {"bearerTokenFile": "token"}}}
    await monitor.check_cluster(REF, spec, PODS, {}, at(0))
    assert metrics.auths and all(a == PrometheusAuthSpec(bearer_token_file="token") for a in metrics.auths)


async def test_a_credential_failure_shows_on_metrics_available(directory: Path) -> None:
    """The real adapter and the service: a missing token file is MetricsAvailable=False naming the field and path."""
    mirror = FakeMirror()
    metrics = PrometheusMetrics(concurrency=2, credentials_dir=str(directory))
    try:
        monitor = Monitor(store=FakeStore(), metrics=metrics, mirror=mirror)
        spec = {**SPEC, "prometheus": {"url": "http://127.0.0.1:9", "auth": {"bearerTokenFile": "tenant/token"}}}
        await monitor.check_cluster(REF, spec, PODS, {}, at(0))
    finally:
        metrics.close()
    available = condition(mirror.status, "MetricsAvailable")
    assert (available["status"], available["reason"]) == ("False", "QueryFailed")
    assert "bearerTokenFile 'tenant/token'" in available["message"] and "No such file" in available["message"]


def test_the_credentials_directory_is_a_setting() -> None:
    assert (
        load_settings({"OPERATOR_K8S_DATABASE_DSN": "x"}).prometheus_credentials_dir == "/etc/operator-k8s/prometheus"
    )
    env = {"OPERATOR_K8S_DATABASE_DSN": "x", "OPERATOR_K8S_PROMETHEUS_CREDENTIALS_DIR": "/var/run/prom"}
    assert load_settings(env).prometheus_credentials_dir == "/var/run/prom"
    with pytest.raises(SettingsError, match="PROMETHEUS_CREDENTIALS_DIR"):
        load_settings({"OPERATOR_K8S_DATABASE_DSN": "x", "OPERATOR_K8S_PROMETHEUS_CREDENTIALS_DIR": "relative"})
