"""Container images for the node, built without a Docker engine or a registry, cached as OCI archives.

* The operator image is built from the repository's own ``Dockerfile`` by buildah (daemonless, chroot isolation),
  with ``BASE_IMAGE`` a Debian bookworm root filesystem made by mmdebstrap from the machine's apt sources: the file a
  user builds with ``docker build`` is the file the install tier runs.
* The quick-start Postgres of the chart (``postgres:16-alpine``) cannot be pulled here: a stand-in is made from
  Debian's postgresql with the official image's environment contract and uid (``images/postgres-entrypoint.sh``).
* The sandbox image ``registry.k8s.io/pause`` is the pause program of ``devstack.builds.node``.

Every archive is named after a hash of its inputs, so a second run imports what the first built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.builds import versions
from devstack.builds.gomodules import CACHE_ROOT
from devstack.host.paths import REPO_ROOT
from devstack.host.processes import log, run_checked

IMAGE_DIR = CACHE_ROOT / "images"
BUILDAH_ROOT = CACHE_ROOT / "buildah"
OPERATOR_REPOSITORY = "ghcr.io/operator-k8s/operator-k8s"
POSTGRES_IMAGE = "devstack.local/postgres:15-debian"
PAUSE_IMAGE = f"registry.k8s.io/pause:{versions.PAUSE}"
SUITE = "bookworm"
PYTHON_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
POSTGRES_PACKAGES = ("postgresql-15", "postgresql-client-15", "bash")
POSTGRES_UID = 70  # as in postgres:*-alpine, which the chart's securityContext names
POSTGRES_PREPARE = (
    "rm -rf /var/lib/postgresql/15 /etc/postgresql/15 && mkdir -p /var/lib/postgresql/data /run/postgresql && "
    f"chown -R {POSTGRES_UID}:{POSTGRES_UID} /var/lib/postgresql /run/postgresql"
)
POSTGRES_CONFIG = (
    "--entrypoint", '["docker-entrypoint.sh"]', "--cmd", "postgres", "--user", f"{POSTGRES_UID}:{POSTGRES_UID}",
    "--env", "PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin",
    "--env", "PGDATA=/var/lib/postgresql/data/pgdata", "--port", "5432",
)  # fmt: skip


@dataclass(frozen=True)
class Image:
    """An image archive ready for ``ctr images import`` and the name it carries."""

    name: str
    archive: Path


def _apt_sources() -> Path:
    """The machine's own apt sources, so that mmdebstrap fetches from wherever apt does."""
    for candidate in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if candidate.exists() and candidate.read_text().strip():
            return candidate
    raise RuntimeError("No apt sources found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)")


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def _rootfs(name: str, packages: tuple[str, ...], essential_hooks: tuple[str, ...] = ()) -> Path:
    """A Debian root filesystem tarball with ``packages`` (mmdebstrap, minbase), cached by its recipe;
    ``essential_hooks`` run after the essential packages, before ``packages`` are installed."""
    key = _digest(SUITE.encode(), " ".join(packages).encode(), "\n".join(essential_hooks).encode())
    tarball = IMAGE_DIR / f"rootfs-{name}-{key}.tar"
    if tarball.exists():
        return tarball
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial.tar")
    started = time.monotonic()
    log(f"Building the {name} root filesystem from Debian packages (mmdebstrap {SUITE}: {', '.join(packages)})")
    argv = ["mmdebstrap", "--quiet", "--variant=minbase", "--mode=root", f"--include={','.join(packages)}"]
    argv += [f"--essential-hook={hook}" for hook in essential_hooks]
    argv += ['--customize-hook=rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*']
    run_checked([*argv, SUITE, str(partial), str(_apt_sources())], f"mmdebstrap of {name}", env=_clean_env())
    partial.rename(tarball)
    log(f"Built the {name} root filesystem in {time.monotonic() - started:.0f}s ({tarball.stat().st_size >> 20} MiB)")
    return tarball


def _clean_env() -> dict[str, str]:
    """The host's pip settings (find-links, certificates) must not leak into chroots; PATH and locale are enough."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
    }


def _buildah(*args: str, what: str) -> str:
    """buildah with the project's own storage under the cache (the machine's container storage is left alone)."""
    argv = ["buildah", "--root", str(BUILDAH_ROOT / "storage"), "--runroot", str(BUILDAH_ROOT / "run"),
            "--storage-driver", "overlay", *args]  # fmt: skip
    # buildah's network set-up would otherwise keep its configuration (and a lock) in the machine's /etc/cni.
    conf = BUILDAH_ROOT / "containers.conf"
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(f'[network]\nnetwork_config_dir = "{BUILDAH_ROOT / "cni"}"\n')
    return run_checked(argv, what, env={**_clean_env(), "BUILDAH_ISOLATION": "chroot", "CONTAINERS_CONF": str(conf)})


def _image_from_rootfs(tarball: Path, name: str) -> None:
    """Commit a root filesystem tarball as a local image ``name`` (``buildah from scratch`` + ``add``)."""
    container = _buildah("from", "scratch", what=f"a container for {name}")
    try:
        _buildah("add", container, str(tarball), "/", what=f"adding {tarball.name}")
        _buildah("commit", "--quiet", container, name, what=f"committing {name}")
    finally:
        _buildah("rm", container, what="removing the working container")


def _archive(name: str, archive: Path) -> Image:
    """Write the local image ``name`` as an OCI archive whose index names it in full (``ctr`` keeps that name)."""
    partial = archive.with_suffix(".partial.tar")
    partial.unlink(missing_ok=True)
    _buildah("push", "--quiet", name, f"oci-archive:{partial}:{name}", what=f"archiving {name}")
    partial.rename(archive)
    _buildah("rmi", "--prune", what="pruning superseded images")  # the archive is the cache; keep storage bounded
    return Image(name=name, archive=archive)


def _remove_superseded(pattern: str, current: Path) -> None:
    """Older archives of the same image, once the new one is in place."""
    for stale in IMAGE_DIR.glob(pattern):
        if stale != current:
            stale.unlink()


def _operator_inputs() -> list[Path]:
    """What the Dockerfile copies (and the Dockerfile itself): the image changes only when these do."""
    files = [REPO_ROOT / "Dockerfile", REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md"]
    files += sorted(p for p in (REPO_ROOT / "operator_k8s").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


def _pip_build_args() -> list[str]:
    """The machine's pip index and certificate bundle for the Dockerfile's build stage (ARG PIP_INDEX_URL/PIP_CERT);
    the bundle is mounted read-only for the RUN steps."""
    args: list[str] = []
    if index := os.environ.get("PIP_INDEX_URL"):
        args += ["--build-arg", f"PIP_INDEX_URL={index}"]
    cert = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(cert).is_file():
        args += ["--volume", f"{cert}:/run/devstack-pip-ca.crt:ro", "--build-arg", "PIP_CERT=/run/devstack-pip-ca.crt"]
    return args


def operator_image(tag: str) -> Image:
    """The operator image ``OPERATOR_REPOSITORY:tag``, built from the repository's Dockerfile by buildah."""
    key = _digest(*(str(p.relative_to(REPO_ROOT)).encode() + p.read_bytes() for p in _operator_inputs()))
    archive = IMAGE_DIR / f"operator-k8s-{tag}-{key}.tar"
    name = f"{OPERATOR_REPOSITORY}:{tag}"
    if archive.exists():
        return Image(name=name, archive=archive)
    base = f"devstack.local/debian-python3:{SUITE}"
    base_tarball = _rootfs("python3", PYTHON_PACKAGES)
    _image_from_rootfs(base_tarball, base)
    started = time.monotonic()
    log(f"Building {name} from the Dockerfile with buildah (BASE_IMAGE={base})")
    with tempfile.TemporaryDirectory(prefix="operator-k8s-image-") as context:
        # The build context: exactly what the Dockerfile copies, so no local virtualenv or cache is sent along.
        for path in _operator_inputs():
            target = Path(context) / path.relative_to(REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        _buildah("bud", "--quiet", "--pull-never", "--layers=false", "--isolation", "chroot",
                 "--build-arg", f"BASE_IMAGE={base}", *_pip_build_args(), "-t", name, "-f",
                 str(Path(context) / "Dockerfile"), context, what=f"building {name}")  # fmt: skip
    image = _archive(name, archive)
    _remove_superseded(f"operator-k8s-{tag}-*.tar", archive)
    log(f"Built {name} in {time.monotonic() - started:.0f}s ({archive.stat().st_size >> 20} MiB archive)")
    return image


def postgres_image() -> Image:
    """The stand-in for the chart's quick-start ``postgres`` image (see the module docstring)."""
    entrypoint = Path(__file__).with_name("images") / "postgres-entrypoint.sh"
    hooks = (
        # The postgres user gets the official alpine image's uid before the package would pick one (no useradd in
        # the essential set yet).
        f'echo "postgres:x:{POSTGRES_UID}:{POSTGRES_UID}::/var/lib/postgresql:/bin/bash" >> "$1/etc/passwd"',
        f'echo "postgres:x:{POSTGRES_UID}:" >> "$1/etc/group"',
    )
    recipe = [*POSTGRES_PACKAGES, *hooks, POSTGRES_PREPARE, *POSTGRES_CONFIG]
    key = _digest(entrypoint.read_bytes(), "\n".join(recipe).encode())
    archive = IMAGE_DIR / f"postgres-15-debian-{key}.tar"
    if archive.exists():
        return Image(name=POSTGRES_IMAGE, archive=archive)
    tarball = _rootfs("postgres", POSTGRES_PACKAGES, hooks)
    _image_from_rootfs(tarball, "devstack.local/postgres-rootfs:15")
    container = _buildah("from", "--pull-never", "devstack.local/postgres-rootfs:15", what="a container for postgres")
    try:
        _buildah("copy", "--chmod", "0755", container, str(entrypoint), "/usr/local/bin/docker-entrypoint.sh",
                 what="adding the entrypoint")  # fmt: skip
        _buildah("run", "--isolation", "chroot", container, "--", "sh", "-c", POSTGRES_PREPARE,
                 what="preparing the data directory")  # fmt: skip
        _buildah("config", *POSTGRES_CONFIG, container, what="configuring postgres")
        _buildah("commit", "--quiet", container, POSTGRES_IMAGE, what="committing postgres")
    finally:
        _buildah("rm", container, what="removing the working container")
    image = _archive(POSTGRES_IMAGE, archive)
    _remove_superseded("postgres-15-debian-*.tar", archive)
    return image


def pause_image(pause_binary: Path) -> Image:
    """``registry.k8s.io/pause`` from the locally built pause program."""
    archive = IMAGE_DIR / f"pause-{versions.PAUSE}-{_digest(pause_binary.read_bytes())}.tar"
    if archive.exists():
        return Image(name=PAUSE_IMAGE, archive=archive)
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    container = _buildah("from", "scratch", what="a container for pause")
    try:
        _buildah("copy", "--chmod", "0755", container, str(pause_binary), "/pause", what="adding pause")
        _buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container, what="configuring pause")
        _buildah("commit", "--quiet", container, PAUSE_IMAGE, what="committing pause")
    finally:
        _buildah("rm", container, what="removing the working container")
    return _archive(PAUSE_IMAGE, archive)
