"""Container images for the local node, made here because no registry can be reached.

- the pause image: a tiny static C program (what ``registry.k8s.io/pause`` does: wait, reap);
- the base ``debian:bookworm-slim``: ``debootstrap --variant=minbase`` trimmed like Debian's
  slim image, committed with buildah under that name, so the project's Dockerfile builds on it
  here as it does anywhere with a registry;
- the project's image: ``buildah bud`` of the Dockerfile (the one users build).

Each is kept as a ``docker-archive`` tarball under ``<cache>/node/images/``; the node imports
them into its containerd at start and :func:`build_project` also loads a running node.
buildah keeps its storage under the cache too (``vfs``: no mounts stay behind).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from pathlib import Path

from liberator_stack import nodeconf as nc
from liberator_stack.process import Say, StackError, cache_dir, run_checked

ROOT = Path(__file__).resolve().parents[2]
BUILD_LINE = re.compile(r"^# Build: docker build -t (?P<ref>\S+) \.$", re.MULTILINE)

PAUSE_C = r"""
/* The node's pause container: hold the pod's namespaces, reap orphans, exit on TERM/INT. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""

# What Debian's slim images leave out; also kept for packages that later RUN steps install.
SLIM_DPKG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""
SOURCES = f"""\
Types: deb
URIs: http://deb.debian.org/debian
Suites: {nc.DEBIAN_SUITE} {nc.DEBIAN_SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {nc.DEBIAN_SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
LENT_CA = "/run/liberator-build/host-ca.crt"
"""Where RUN steps see the host's bundle (the Dockerfile's HOST_CA argument)."""
BASE_RECIPE = "1"  # bump when the base recipe changes


def image_dir() -> Path:
    path = cache_dir() / "node" / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def project_image() -> str:
    """The image reference of the Dockerfile's build line (the one source deploy/ also uses)."""
    match = BUILD_LINE.search((ROOT / "Dockerfile").read_text())
    if match is None:
        raise StackError("the Dockerfile lacks its '# Build: docker build -t NAME:TAG .' line")
    return match["ref"]


def buildah(*args: str) -> list[str]:
    exe = shutil.which("buildah")
    if exe is None:
        raise StackError("buildah is missing: run hack/stack build (it installs Debian's buildah)")
    store = cache_dir() / "buildah"
    return [
        exe,
        "--root",
        str(store / "root"),
        "--runroot",
        str(store / "run"),
        "--storage-driver",
        "vfs",
        *args,
    ]


def _log(name: str) -> Path:
    return cache_dir() / "logs" / f"image-{name}.log"


def _stamped(tar: Path, stamp: str) -> bool:
    stamp_file = tar.with_suffix(".stamp")
    return tar.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp


def _save(ref: str, tar: Path, stamp: str, log: Path) -> None:
    partial = tar.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    run_checked(
        buildah("push", ref, f"docker-archive:{partial}:{ref}"), log=log, what=f"buildah push {ref}"
    )
    partial.replace(tar)
    tar.with_suffix(".stamp").write_text(stamp + "\n")


def _from_scratch(ref: str, log: Path, *, add: Path, dest: str, config: list[str]) -> None:
    container = subprocess.run(
        buildah("from", "scratch"), capture_output=True, text=True, check=False
    )
    if container.returncode != 0:
        raise StackError(f"buildah from scratch failed: {container.stderr.strip()}")
    name = container.stdout.strip()
    try:
        run_checked(buildah("add", name, str(add), dest), log=log, what=f"buildah add {add}")
        if config:
            run_checked(buildah("config", *config, name), log=log, what="buildah config")
        run_checked(buildah("commit", "--rm", name, ref), log=log, what=f"buildah commit {ref}")
    finally:
        subprocess.run(buildah("rm", name), capture_output=True, check=False)


def build_pause(say: Say) -> Path:
    tar = image_dir() / "pause.tar"
    stamp = hashlib.sha256(PAUSE_C.encode()).hexdigest()
    if _stamped(tar, stamp):
        return tar
    gcc = shutil.which("gcc")
    if gcc is None:
        raise StackError(
            "gcc is missing: install build-essential (the pause image is a tiny static C program)"
        )
    log = _log("pause")
    work = cache_dir() / "node" / "pause"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pause.c").write_text(PAUSE_C)
    run_checked(
        [gcc, "-static", "-Os", "-s", "-o", str(work / "pause"), str(work / "pause.c")],
        log=log,
        what="gcc -static pause.c",
    )
    _from_scratch(
        nc.PAUSE_IMAGE,
        log,
        add=work / "pause",
        dest="/pause",
        config=["--entrypoint", '["/pause"]', "--user", "65535:65535"],
    )
    _save(nc.PAUSE_IMAGE, tar, stamp, log)
    say(f"built the pause image {nc.PAUSE_IMAGE}")
    return tar


def build_base(say: Say) -> None:
    """``debian:bookworm-slim`` from Debian's packages, into buildah's storage (cached)."""
    tar = cache_dir() / "node" / "base.tar"  # not in image_dir(): the node needs no copy
    stamp = hashlib.sha256(f"{BASE_RECIPE}{SLIM_DPKG}{SOURCES}".encode()).hexdigest()
    have = (
        subprocess.run(
            buildah("inspect", "--type", "image", nc.BASE_IMAGE), capture_output=True, check=False
        ).returncode
        == 0
    )
    if have and _stamped(tar, stamp):
        return
    log = _log("base")
    if not _stamped(tar, stamp):
        _make_base(say, tar, stamp, log)
    else:
        run_checked(
            buildah("pull", f"docker-archive:{tar}"),
            log=log,
            what=f"buildah pull docker-archive:{tar}",
        )


def _make_base(say: Say, tar: Path, stamp: str, log: Path) -> None:
    """debootstrap, trim, commit as the base image and save it to ``tar`` under ``stamp``."""
    say(
        f"making {nc.BASE_IMAGE} with debootstrap --variant=minbase {nc.DEBIAN_SUITE} "
        f"(about 60-120 s; log: {log})"
    )
    started = time.monotonic()
    rootfs = cache_dir() / "node" / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    run_checked(
        [
            "debootstrap",
            "--variant=minbase",
            nc.DEBIAN_SUITE,
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        log=log,
        what="debootstrap",
    )
    _slim(rootfs)
    rootfs_tar = tar.with_suffix(".rootfs.tar")
    run_checked(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(rootfs_tar), "."],
        log=log,
        what="tar the base rootfs",
    )
    shutil.rmtree(rootfs, ignore_errors=True)
    _from_scratch(
        nc.BASE_IMAGE,
        log,
        add=rootfs_tar,
        dest="/",
        config=[
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--cmd",
            '["bash"]',
        ],
    )
    rootfs_tar.unlink(missing_ok=True)
    _save(nc.BASE_IMAGE, tar, stamp, log)
    say(f"made {nc.BASE_IMAGE} in {time.monotonic() - started:.0f}s")


def _slim(rootfs: Path) -> None:
    (rootfs / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_DPKG)
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(SOURCES)
    for pattern in (
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "usr/share/lintian/*",
        "var/lib/apt/lists/*",
        "var/cache/apt/*",
        "var/cache/debconf/*-old",
        "var/log/*.log",
        "var/log/apt/*",
    ):
        for path in rootfs.glob(pattern):
            if path.name in {"copyright", "partial"}:
                continue
            if path.is_dir() and not path.is_symlink():
                if pattern.startswith("usr/share/doc/"):
                    for child in path.iterdir():
                        if child.name != "copyright":
                            _remove(child)
                    continue
                shutil.rmtree(path)
            else:
                path.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def build_project(say: Say, ref: str | None = None) -> Path:
    """``buildah bud`` the Dockerfile; save it for the node; return the tarball."""
    ref = ref or project_image()
    build_base(say)
    log = _log("liberator")
    say(f"building {ref} from the Dockerfile with buildah (log: {log})")
    started = time.monotonic()
    # runc, not crun: crun refuses hybrid cgroups. The host network reaches the registries, and
    # the host's CA bundle (which may hold a proxy's CA) is lent to pip, not kept. Not at the
    # image's own bundle path: apt's ca-certificates replaces that file, and a mount is busy.
    trust = (
        [f"--volume={HOST_CA}:{LENT_CA}:ro", "--build-arg", f"HOST_CA={LENT_CA}"]
        if Path(HOST_CA).exists()
        else []
    )
    iidfile = image_dir() / "liberator.iid"
    run_checked(
        buildah(
            "bud",
            "--runtime",
            nc.RUNC,
            "--pull=never",
            "--network",
            "host",
            *trust,
            "--layers",
            f"--iidfile={iidfile}",
            "-t",
            ref,
            "-f",
            str(ROOT / "Dockerfile"),
            str(ROOT),
        ),
        log=log,
        what=f"buildah bud {ref}",
    )
    tar = image_dir() / "liberator.tar"
    image_id = f"{ref} {iidfile.read_text().strip()}"
    if not _stamped(tar, image_id):  # an unchanged build (all layers cached) is not saved again
        _save(ref, tar, image_id, log)
    say(f"built {ref} in {time.monotonic() - started:.0f}s; {image_size(ref) / 1e6:.0f} MB")
    return tar


def ensure_project(say: Say) -> Path:
    """The project image's tarball, built only when there is none (``make image`` rebuilds)."""
    tar = image_dir() / "liberator.tar"
    return tar if tar.exists() else build_project(say)


def image_size(ref: str) -> int:
    """The uncompressed size of ``ref`` in buildah's storage, in bytes."""
    out = subprocess.run(
        buildah("inspect", "--type", "image", "--format", "{{.Docker.Size}}", ref),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    with_size = out.strip()
    if with_size.isdigit() and int(with_size) > 0:
        return int(with_size)
    out = subprocess.run(
        buildah("images", "--format", "{{.Size}}", "--filter", f"reference={ref}"),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    units = {"B": 1, "KB": 1e3, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    if len(out) >= 2 and out[1] in units:
        return int(float(out[0]) * units[out[1]])
    return 0


def ctr(*args: str) -> list[str]:
    return ["ctr", "--address", str(nc.CONTAINERD_SOCKET), "--namespace", "k8s.io", *args]


def import_into_node(tar: Path, log: Path) -> None:
    run_checked(ctr("images", "import", str(tar)), log=log, what=f"ctr images import {tar.name}")


def node_tarballs() -> list[Path]:
    return sorted(image_dir().glob("*.tar"))
