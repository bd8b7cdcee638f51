"""Certificates and keys for the API server and its clients, made with the openssl command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed_cert(directory: Path, name: str, subject: str, extensions: str) -> None:
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=directory)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=directory)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        ext_file.name,
        "-out",
        f"{name}.crt",
        cwd=directory,
    )


def signed_cert(directory: Path, name: str, subject: str, server_ips: tuple[str, ...] = ()) -> None:
    """``<name>.crt``/``.key`` signed by the CA in ``directory``: a client certificate, or a serving one for
    ``server_ips`` when any are given."""
    if server_ips:
        sans = ",".join(f"IP:{ip}" for ip in server_ips)
        _signed_cert(directory, name, subject, f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    else:
        _signed_cert(directory, name, subject, "extendedKeyUsage=clientAuth\n")


def make_pki(directory: Path, server_ips: tuple[str, ...] = ("127.0.0.1",)) -> Pki:
    """A CA, a serving certificate for ``server_ips`` and the ``kubernetes`` Service's names, an admin client
    (system:masters) and a service-account key."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=directory)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=operator-k8s-devstack-ca",
        "-days",
        "30",
        "-out",
        "ca.crt",
        cwd=directory,
    )
    _signed_cert(
        directory,
        "apiserver",
        "/CN=kube-apiserver",
        "subjectAltName="
        + ",".join(f"IP:{ip}" for ip in server_ips)
        + ",DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n",
    )
    _signed_cert(directory, "admin", "/O=system:masters/CN=devstack-admin", "extendedKeyUsage=clientAuth\n")
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    return Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        service_account_key=directory / "sa.key",
    )
