"""kube-apiserver from the Go module proxy plus etcd, configured like controller-runtime's envtest.

The Kubernetes release is pinned in ``hack/kube/go.mod`` (the one source of the version). The
binary is built once and cached under ``<cache>/kube/<version>/``; later builds only compare a
stamp (:mod:`liberator_stack.kubebuild`). :func:`start` runs etcd (:mod:`liberator_stack.etcd`) and
the API server on free loopback ports with generated certificates (:mod:`liberator_stack.certs`)
and writes an admin kubeconfig (``O=system:masters``) to ``<run_dir>/kubeconfig``.

There is no kubelet, scheduler or controller manager: pods stay Pending, Jobs never run, owner
references are not garbage-collected, and no ``default`` service account exists (so the
``ServiceAccount`` admission plugin is off, as in envtest).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from liberator_stack.certs import KeyPair, issue_cert, key_pem, new_ca
from liberator_stack.etcd import ETCD, etcd_version, install_etcd, start_etcd
from liberator_stack.kubebuild import (
    COMPONENTS,
    apiserver_path,
    binary_path,
    build_components,
    check_staging_replaces,
    pinned_version,
    read_go_mod,
)
from liberator_stack.process import (
    Proc,
    Say,
    Server,
    StackError,
    free_port,
    http_get,
    spawn,
    wait_until,
)

# The release, build and certificate names are re-exported: tests and docs know them here.
__all__ = [
    "COMPONENTS",
    "KeyPair",
    "apiserver_path",
    "binary_path",
    "build",
    "build_components",
    "check_staging_replaces",
    "issue_cert",
    "new_ca",
    "pinned_version",
    "read_go_mod",
    "start",
]

SERVICE_CIDR = "10.0.0.0/24"
START_TIMEOUT = 90.0
PORT_ATTEMPTS = 3


def build(say: Say) -> None:
    """Build kube-apiserver at the pinned release (cached), and make sure etcd is installed."""
    build_components(say, ("kube-apiserver",))
    install_etcd(say)


# -- certificates and the kubeconfig --------------------------------------------------------------


@dataclass(frozen=True)
class _Pki:
    ca: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public: Path
    sa_private: Path


def _pki(directory: Path, *, reuse: bool) -> _Pki:
    paths = _Pki(
        directory / "ca.crt",
        directory / "apiserver.crt",
        directory / "apiserver.key",
        directory / "admin.crt",
        directory / "admin.key",
        directory / "sa.pub",
        directory / "sa.key",
    )
    # A restart keeps the certificates, so kubeconfigs that clients already hold stay valid.
    if reuse and all(Path(p).exists() for p in vars(paths).values()):
        return paths
    ca = new_ca("liberator-local-ca")
    ca.write(directory, "ca")
    issue_cert(
        ca,
        "kube-apiserver",
        hosts=(
            "127.0.0.1",
            "localhost",
            "10.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
    ).write(directory, "apiserver")
    issue_cert(ca, "liberator-admin", organizations=("system:masters",), client=True).write(
        directory, "admin"
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    paths.sa_private.touch(mode=0o600)
    paths.sa_private.write_bytes(key_pem(sa_key))
    paths.sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths


def _write_kubeconfig(path: Path, server: str, pki: _Pki) -> None:
    def data(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "liberator-local",
                "cluster": {"server": server, "certificate-authority-data": data(pki.ca)},
            }
        ],
        "users": [
            {
                "name": "liberator-admin",
                "user": {
                    "client-certificate-data": data(pki.admin_cert),
                    "client-key-data": data(pki.admin_key),
                },
            }
        ],
        "contexts": [
            {
                "name": "liberator-local",
                "context": {
                    "cluster": "liberator-local",
                    "user": "liberator-admin",
                    "namespace": "default",
                },
            }
        ],
        "current-context": "liberator-local",
    }
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# -- start ----------------------------------------------------------------------------------------


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise StackError(f"kube-apiserver port must be 1-65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Go servers do: a port in TIME_WAIT after a restart is free, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            raise StackError(
                f"kube-apiserver port {port} on 127.0.0.1 is not free ({error}); "
                "stop what listens there or pass no port to pick a free one"
            ) from None


def _start_apiserver(run_dir: Path, exe: Path, port: int, etcd_url: str, pki: _Pki) -> Proc:
    server = f"https://127.0.0.1:{port}"
    argv = [
        str(exe),
        f"--etcd-servers={etcd_url}",
        f"--secure-port={port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca}",
        f"--service-account-issuer={server}/",
        f"--service-account-key-file={pki.sa_public}",
        f"--service-account-signing-key-file={pki.sa_private}",
        "--authorization-mode=Node,RBAC",
        # No token controller runs, so no pod could get its default service account.
        "--disable-admission-plugins=ServiceAccount",
        "--enable-admission-plugins=NamespaceLifecycle,MutatingAdmissionWebhook,"
        "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]
    env = dict(os.environ)
    # A soft heap limit: the Go runtime collects harder instead of growing (the machine is shared).
    env.setdefault("GOMEMLIMIT", "400MiB")
    return spawn("kube-apiserver", argv, run_dir / "kube-apiserver.log", env=env)


def _wait_ready(proc: Proc, server: str, pki: _Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))

    def ready() -> bool:
        status, body = http_get(f"{server}/readyz", context)
        if status != 200 or body.strip() != b"ok":
            return False
        # The system namespaces controller creates "default" a moment after readyz; tests that
        # start right away would otherwise race it.
        status, _ = http_get(f"{server}/api/v1/namespaces/default", context)
        return status == 200

    wait_until(proc, ready, timeout=START_TIMEOUT, what="kube-apiserver")


def start(run_dir: Path, port: int | None = None) -> Server:
    """Start etcd and kube-apiserver; with ``port`` (a restart) keep etcd data and certificates."""
    version = pinned_version(read_go_mod())
    exe = apiserver_path(version)
    if not exe.exists():
        raise StackError(f"kube-apiserver {version} is not built at {exe}; run hack/stack build")
    if not Path(ETCD).exists():
        raise StackError(f"etcd is not installed at {ETCD}; run hack/stack build")
    restart = port is not None
    if port is not None:
        _check_port(port)
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir = run_dir / "etcd-data"
    pki = _pki(run_dir / "pki", reuse=restart)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        if not restart:
            # A fresh start must not inherit webhooks or CRDs left by an earlier session.
            shutil.rmtree(data_dir, ignore_errors=True)
        api_port = port if port is not None else free_port()
        server = f"https://127.0.0.1:{api_port}"
        try:
            etcd, etcd_url = start_etcd(run_dir, data_dir)
            try:
                apiserver = _start_apiserver(run_dir, exe, api_port, etcd_url, pki)
                try:
                    _wait_ready(apiserver, server, pki)
                except BaseException:
                    apiserver.stop()
                    raise
            except BaseException:
                etcd.stop()
                raise
        except StackError as error:
            # Free ports are picked before the servers bind them; on a shared machine another
            # process can take one in between. Pick again rather than fail the test session.
            if "address already in use" not in str(error) or attempt == PORT_ATTEMPTS:
                raise
            continue
        break
    kubeconfig = run_dir / "kubeconfig"
    _write_kubeconfig(kubeconfig, server, pki)
    return Server(
        "kube",
        [etcd, apiserver],
        exports={"KUBECONFIG": str(kubeconfig)},
        details={
            "port": str(api_port),
            "version": version,
            "server": server,
            "etcd": etcd_url,
            "etcd_version": etcd_version(ETCD),
            "kubeconfig": str(kubeconfig),
            "ca": str(pki.ca),
        },
        run_dir=run_dir,
    )
