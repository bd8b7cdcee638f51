"""Installing it as users do: helm (restricted pod security, schema-checked values, uninstall) and plain manifests,
then running the operator with exactly the chart's ServiceAccount and RBAC."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.builds import versions
from devstack.host.paths import REPO_ROOT
from devstack.jobs import manifests
from devstack.world.operator import operator_process
from devstack.world.stack import Stack
from operator_k8s.settings import Settings
from tests.stackutil import (
    apply_tikv_example,
    condition_status,
    eventually,
    get_json,
    open_in_db,
    start_cluster,
    store_fault,
)

pytestmark = pytest.mark.stack
CHART = str(REPO_ROOT / "charts" / "operator-k8s")


def restricted_namespace(stack: Stack, name: str) -> None:
    stack.kubectl("create", "namespace", name)
    stack.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                  "pod-security.kubernetes.io/warn=restricted")  # fmt: skip
    stack.kubectl("create", "secret", "generic", "db", f"--from-literal=dsn={stack.postgres_dsn}", "-n", name)


def service_account_kubeconfig(stack: Stack, namespace: str, account: str) -> Path:
    token = stack.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    return stack.token_kubeconfig(token, f"{namespace}-{account}")


def pod_from_deployment(stack: Stack, namespace: str, name: str) -> dict[str, Any]:
    template = get_json(stack, "deployment", name, "-n", namespace)["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "admission-probe", "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}  # fmt: skip


def test_chart_lints_and_renders_with_a_schema() -> None:
    stack_helm = manifests.build_helm()
    lint = subprocess.run([str(stack_helm), "lint", "--strict", CHART, "--set", "database.existingSecret=db"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # Offline, helm assumes the Kubernetes its release was built for: the chart's kubeVersion must accept it.
    offline = subprocess.run([str(stack_helm), "template", "x", CHART, "--set", "database.existingSecret=db"],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert offline.returncode == 0, offline.stderr


def test_prometheus_credentials_are_mounted_read_only_where_the_operator_reads_them() -> None:
    def deployment(*values: str) -> dict[str, Any]:
        rendered = subprocess.run(
            [str(manifests.build_helm()), "template", "x", CHART, "--kube-version", versions.KUBERNETES,
             "--set", "database.existingSecret=db", *values],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        found: dict[str, Any] = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
        return found["spec"]["template"]["spec"]

    pod = deployment("--set", "prometheusCredentials.secretName=prometheus-credentials")
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    directory = env["OPERATOR_K8S_PROMETHEUS_CREDENTIALS_DIR"]
    assert directory == Settings.model_fields["prometheus_credentials_dir"].default
    assert mounts["prometheus-credentials"] == {
        "name": "prometheus-credentials",
        "mountPath": directory,
        "readOnly": True,
    }
    assert volumes["prometheus-credentials"]["secret"] == {"secretName": "prometheus-credentials"}
    assert "prometheus-credentials" not in {v["name"] for v in deployment()["volumes"]}, "nothing mounted by default"


def test_chart_crds_are_the_crds() -> None:
    for source in (REPO_ROOT / "crds").glob("*.yaml"):
        assert (REPO_ROOT / "charts/operator-k8s/crds" / source.name).read_text() == source.read_text(), source.name


def test_plain_manifests_are_rendered_from_the_chart() -> None:
    assert manifests.render() == manifests.OUTPUT.read_text(), (
        "run `make manifests` and commit deploy/operator-k8s.yaml"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "at '/database/existingSecret': minLength"),
        (
            ["--set", "database.existingSecret=db", "--set", "replicaCount=2"],
            "at '/peering/enabled': value must be true",
        ),
        (["--set", "database.existingSecret=db", "--set", "settings.logLevel=LOUD"], "at '/settings/logLevel'"),
        (
            ["--set", "database.existingSecret=db", "--set", "surprise=1"],
            "additional properties 'surprise' not allowed",
        ),
        (
            ["--set", "database.existingSecret=db", "--set", "prometheusCredentials.secretName=Not_A_Name"],
            "at '/prometheusCredentials/secretName'",
        ),
        (
            ["--set", "database.existingSecret=db", "--set", "metrics.port=8081"],
            "metrics.port and health.port must differ (both are 8081)",
        ),
        (
            ["--set", "database.existingSecret=mine", "--set", "postgres.enabled=true"],
            "database.existingSecret (mine) and postgres.enabled=true exclude each other",
        ),
        (
            [
                "--set",
                "database.existingSecret=db",
                "--set",
                "metrics.service.enabled=false",
                "--set",
                "metrics.serviceMonitor.enabled=true",
            ],
            "metrics.serviceMonitor.enabled=true needs metrics.service.enabled=true",
        ),
        (["--set", "database.existingSecret=db", "--set", "image.tag=a b"], "at '/image/tag'"),
    ],
    ids=[
        "no-database",
        "replicas-without-peering",
        "bad-log-level",
        "unknown-value",
        "bad-credentials-secret",
        "same-ports",
        "secret-and-quick-start",
        "service-monitor-without-service",
        "bad-image-tag",
    ],
)
def test_invalid_values_are_rejected_readably(stack: Stack, values: list[str], message: str) -> None:
    result = stack.helm("install", "bad", CHART, "-n", "default", "--dry-run=server", *values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_helm_install_restricted_rbac_is_enough_and_uninstall_leaves_only_crds(stack: Stack, namespace: str) -> None:
    home = f"{namespace}-op"
    restricted_namespace(stack, home)
    installed = stack.helm("install", "ok8s", CHART, "-n", home, "--set", "database.existingSecret=db", "--wait=false")
    assert "violate PodSecurity" not in installed.stderr, installed.stderr
    assert "STATUS: deployed" in installed.stdout

    # No kubelet runs the Deployment, so admit its pod template as a Pod under the namespace's restricted policy.
    pod = pod_from_deployment(stack, home, "ok8s-operator-k8s")
    admitted = stack.kubectl(
        "create", "-n", home, "--dry-run=server", "-f", "-", input_text=json.dumps(pod), check=False
    )
    assert admitted.returncode == 0, admitted.stderr
    unhardened = {**pod, "spec": {**pod["spec"], "securityContext": {}, "containers": [{"name": "c", "image": "x"}]}}
    refused = stack.kubectl(
        "create", "-n", home, "--dry-run=server", "-f", "-", input_text=json.dumps(unhardened), check=False
    )
    assert "violates PodSecurity" in refused.stderr, "the restricted policy is enforced (negative control)"

    # The operator, run with the chart's ServiceAccount token, completes the monitoring scenario.
    as_operator = service_account_kubeconfig(stack, home, "ok8s-operator-k8s")
    # The authorizer learns of the chart's bindings from its watch cache: wait until they hold, then count Forbidden.
    eventually(lambda: stack.kubectl("--kubeconfig", str(as_operator), "auth", "can-i", "patch", "monitoredclusters",
                                     "--subresource=status", "-n", namespace, check=False).stdout.strip() == "yes",
               what="the chart's RBAC to take effect", timeout=30)  # fmt: skip
    operator = operator_process(stack, f"operator-{home}.log", kubeconfig=as_operator)
    try:
        start_cluster(stack, namespace, invariants={})
        store_fault(stack, namespace, "tikv", "tikv-2", "disk", {"percent": 96})
        eventually(lambda: open_in_db(stack, namespace, "diskUsage"), what="a ticket opened under the chart's RBAC")
        eventually(lambda: get_json(stack, "tickets", "-n", namespace)["items"], what="its Ticket resource")
        store_fault(stack, namespace, "tikv", "tikv-2", "disk", heal=True)
        eventually(lambda: not open_in_db(stack, namespace, "diskUsage"), what="resolution", timeout=60)
        eventually(lambda: condition_status(stack, namespace, "tikv", "DiskSpaceAvailable") == "True", what="condition")
        events = stack.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
        assert "TicketOpened" in events
        assert "TicketResolved" in events
        assert "Forbidden" not in operator.log_path.read_text()
    finally:
        operator.stop()

    # ... and is denied what it was not granted.
    stack.kubectl("create", "secret", "generic", "other", "--from-literal=k=v", "-n", namespace)
    denied = stack.kubectl("--kubeconfig", str(as_operator), "get", "secret", "other", "-n", namespace, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    for verb, resource in (("get", "secrets"), ("delete", "pods"), ("create", "clusterroles"), ("*", "*")):
        can = stack.kubectl("--kubeconfig", str(as_operator), "auth", "can-i", verb, resource, "-A", check=False)
        assert can.stdout.strip() == "no", (verb, resource)

    stack.helm("uninstall", "ok8s", "-n", home)
    selector = "app.kubernetes.io/instance=ok8s"
    for kind in ("deployments,serviceaccounts,services,roles,rolebindings", "clusterroles,clusterrolebindings"):
        scope = ["-n", home] if "deployments" in kind else []
        assert stack.kubectl("get", kind, "-l", selector, "-o", "name", *scope).stdout.strip() == ""
    crds = stack.kubectl("get", "crd", "-o", "name").stdout
    assert "monitoredclusters.operator-k8s.io" in crds, "CRDs stay after uninstall, by design"


def test_kubectl_apply_deploy_then_the_example_works(stack: Stack, namespace: str) -> None:
    stack.kubectl("apply", "-f", str(REPO_ROOT / "deploy"))
    home = manifests.NAMESPACE
    stack.kubectl("create", "secret", "generic", "operator-k8s-database", f"--from-literal=dsn={stack.postgres_dsn}",
                  "-n", home)  # fmt: skip
    as_operator = service_account_kubeconfig(stack, home, "operator-k8s")
    operator = operator_process(stack, "operator-deploy.log", kubeconfig=as_operator)
    try:
        apply_tikv_example(stack, namespace, interval="1s")
        eventually(lambda: condition_status(stack, namespace, "tikv-prod", "StoresReady") == "True", what="StoresReady",
                   timeout=90)  # fmt: skip
        lines = stack.kubectl("get", "mc", "-n", namespace).stdout.splitlines()
        row = lines[1].split()
        assert row[0] == "tikv-prod"
        assert row[2:4] == ["3/3", "ready"]
    finally:
        operator.stop()


def test_quick_start_postgres_renders_admissible_under_restricted(stack: Stack, namespace: str) -> None:
    home = f"{namespace}-pg"
    restricted_namespace(stack, home)
    result = stack.helm("install", "quick", CHART, "-n", home, "--set", "postgres.enabled=true", "--dry-run=server")
    assert "violate PodSecurity" not in result.stderr, result.stderr
    assert "kind: StatefulSet" in result.stdout
    assert "postgresql://operator:" in result.stdout, "the DSN Secret is generated"
