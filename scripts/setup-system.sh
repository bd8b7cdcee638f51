#!/usr/bin/env bash
# System packages the stack needs (Debian): Postgres, PgBouncer, Prometheus, Alertmanager, openssl, and node mode's. Idempotent and quiet when done.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)  # transaction pooling in front of Postgres, as production runs it
command -v openssl >/dev/null || need+=(openssl)
# Node mode (the install tier): runc and the CNI plugins run pods; buildah and mmdebstrap build images without Docker;
# iptables serves kube-proxy and the kubelet.
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v buildah >/dev/null || need+=(buildah)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v iptables >/dev/null || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  echo "[setup] Installing Debian packages: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "[setup] Go is required to build the control plane (go 1.26+ on PATH)" >&2; exit 1; }
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "[setup] Python 3.11+ is required as python3" >&2; exit 1; }
echo "[setup] System packages present"
