"""The operator's settings from the environment: the variable names, the DSN from a file, messages that name the
variable and why, and a DSN that never shows in a repr or a message. Environments are plain dicts; no process
environment is read except where a test says so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from operator_k8s.__main__ import dsn_source
from operator_k8s.settings import Settings, SettingsError, load_settings

DSN = "postgresql://operator:pa55w0rd@db:5432/tickets"


def test_the_defaults_need_only_a_dsn() -> None:
    settings = load_settings({"OPERATOR_K8S_DATABASE_DSN": DSN})
    assert settings.database_dsn.get_secret_value() == DSN
    assert (settings.tick_seconds, settings.namespaces, settings.peering, settings.log_format) == (5.0, [], "", "json")
    assert (settings.metrics_port, settings.health_port, settings.bind_address) == (8080, 8081, "127.0.0.1")


def test_each_field_is_read_from_its_prefixed_variable() -> None:
    env = {
        "OPERATOR_K8S_DATABASE_DSN": DSN,
        "OPERATOR_K8S_TICK_SECONDS": "0.5",
        "OPERATOR_K8S_PROMETHEUS_QUERY_THREADS": "8",
        "OPERATOR_K8S_LOG_FORMAT": "text",
        "OPERATOR_K8S_LOG_LEVEL": "DEBUG",
        "OPERATOR_K8S_METRICS_PORT": "0",
        "OPERATOR_K8S_PEERING": "operator-k8s",
        "OPERATOR_K8S_PEERING_WAIT_SECONDS": "0",
    }
    settings = load_settings(env)
    assert (settings.tick_seconds, settings.prometheus_query_threads, settings.log_format, settings.log_level) == (
        0.5,
        8,
        "text",
        "DEBUG",
    )
    assert (settings.metrics_port, settings.peering, settings.peering_wait_seconds) == (0, "operator-k8s", 0)


@pytest.mark.parametrize(
    ("raw", "namespaces"),
    [("a", ["a"]), ("a,b", ["a", "b"]), (" a , b ,, ", ["a", "b"]), ("", []), (" , ", [])],
)
def test_namespaces_are_comma_separated(raw: str, namespaces: list[str]) -> None:
    assert load_settings({"OPERATOR_K8S_DATABASE_DSN": DSN, "OPERATOR_K8S_NAMESPACES": raw}).namespaces == namespaces


def test_variables_of_other_tools_under_the_prefix_are_ignored() -> None:
    """devstack's ``OPERATOR_K8S_CACHE`` and the like share the prefix; the operator must still start."""
    assert (
        load_settings({"OPERATOR_K8S_DATABASE_DSN": DSN, "OPERATOR_K8S_CACHE": "/var/cache/ok8s"}).tick_seconds == 5.0
    )


def test_only_the_upper_case_names_count() -> None:
    env = {"OPERATOR_K8S_DATABASE_DSN": DSN, "operator_k8s_tick_seconds": "1", "Operator_K8s_Log_Format": "text"}
    assert (load_settings(env).tick_seconds, load_settings(env).log_format) == (5.0, "json")


@pytest.mark.parametrize("env", [{}, {"OPERATOR_K8S_DATABASE_DSN": ""}, {"OPERATOR_K8S_DATABASE_DSN_FILE": ""}])
def test_without_a_dsn_the_message_names_both_variables(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(env)
    assert str(raised.value) == (
        "Set OPERATOR_K8S_DATABASE_DSN or OPERATOR_K8S_DATABASE_DSN_FILE (a Postgres DSN, e.g. from a Secret)"
    )


def test_the_dsn_file_wins_over_the_variable_and_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text(DSN + "\n")
    env = {"OPERATOR_K8S_DATABASE_DSN_FILE": str(path), "OPERATOR_K8S_DATABASE_DSN": "postgresql://other"}
    assert load_settings(env).database_dsn.get_secret_value() == DSN


def test_a_dsn_from_a_file_is_read_again_for_each_connection(tmp_path: Path) -> None:
    """A password rotated in the mounted Secret reaches the next connection; a DSN from the variable is as it was."""
    path = tmp_path / "dsn"
    path.write_text(DSN + "\n")
    source = dsn_source(load_settings({"OPERATOR_K8S_DATABASE_DSN_FILE": str(path)}))
    assert callable(source) and source() == DSN
    path.write_text("postgresql://operator:rotated@db/tickets\n")
    assert source() == "postgresql://operator:rotated@db/tickets"
    assert dsn_source(load_settings({"OPERATOR_K8S_DATABASE_DSN": DSN})) == DSN


def test_an_unreadable_dsn_file_is_named_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(SettingsError) as raised:
        load_settings({"OPERATOR_K8S_DATABASE_DSN_FILE": str(missing), "OPERATOR_K8S_DATABASE_DSN": DSN})
    assert str(raised.value) == f"OPERATOR_K8S_DATABASE_DSN_FILE={missing} cannot be read: No such file or directory"


def test_an_empty_dsn_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text("\n")
    with pytest.raises(SettingsError, match=r"^OPERATOR_K8S_DATABASE_DSN_FILE=.*dsn is empty"):
        load_settings({"OPERATOR_K8S_DATABASE_DSN_FILE": str(path)})


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("OPERATOR_K8S_TICK_SECONDS", "0", "greater than 0"),
        ("OPERATOR_K8S_TICK_SECONDS", "", "valid number"),
        ("OPERATOR_K8S_TICK_SECONDS", "soon", "valid number"),
        ("OPERATOR_K8S_PROMETHEUS_QUERY_THREADS", "1", "greater than or equal to 2"),
        ("OPERATOR_K8S_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("OPERATOR_K8S_LOG_LEVEL", "LOUD", "match pattern"),
        ("OPERATOR_K8S_LOG_FORMAT", "xml", "match pattern"),
        ("OPERATOR_K8S_CRASH_AFTER_COMMIT", "2", "less than or equal to 1"),
        ("OPERATOR_K8S_PROMETHEUS_CREDENTIALS_DIR", "relative", "match pattern"),
    ],
)
def test_a_bad_value_is_reported_with_its_variable_and_why(variable: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"OPERATOR_K8S_DATABASE_DSN": DSN, variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable}: ") and reason in message
    assert DSN not in message


def test_every_bad_variable_is_reported_at_once() -> None:
    env = {"OPERATOR_K8S_DATABASE_DSN": DSN, "OPERATOR_K8S_TICK_SECONDS": "0", "OPERATOR_K8S_DB_POOL_SIZE": "0"}
    with pytest.raises(SettingsError) as raised:
        load_settings(env)
    assert str(raised.value).count("; ") == 1
    assert "OPERATOR_K8S_TICK_SECONDS: " in str(raised.value) and "OPERATOR_K8S_DB_POOL_SIZE: " in str(raised.value)


def test_the_dsn_never_shows_in_a_repr_a_str_or_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"OPERATOR_K8S_DATABASE_DSN": DSN})
    with caplog.at_level(logging.INFO):
        logging.getLogger("operator_k8s.test").info("Loaded the settings", extra={"settings": settings})
    for shown in (repr(settings), str(settings), settings.model_dump_json(), caplog.text, repr(caplog.records)):
        assert "pa55w0rd" not in shown


def test_settings_are_frozen() -> None:
    settings = load_settings({"OPERATOR_K8S_DATABASE_DSN": DSN})
    with pytest.raises(ValueError, match="frozen"):
        settings.tick_seconds = 1.0  # type: ignore[misc]


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``load_settings()`` and ``Settings()`` (pydantic-settings' own entry) read the same sources."""
    path = tmp_path / "dsn"
    path.write_text(DSN)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("OPERATOR_K8S_TICK_SECONDS=9\n")  # never read: the environment only
    monkeypatch.setenv("OPERATOR_K8S_DATABASE_DSN_FILE", str(path))
    monkeypatch.setenv("OPERATOR_K8S_NAMESPACES", "a,b")
    for settings in (load_settings(), Settings()):
        assert settings.database_dsn.get_secret_value() == DSN
        assert (settings.namespaces, settings.tick_seconds) == (["a", "b"], 5.0)


def test_values_given_in_code_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPERATOR_K8S_LOG_LEVEL", "ERROR")
    settings = Settings(database_dsn=SecretStr(DSN), log_level="DEBUG", namespaces=["x"])
    assert (settings.log_level, settings.namespaces) == ("DEBUG", ["x"])
