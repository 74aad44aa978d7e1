"""kube-apiserver from the Go module proxy plus etcd, configured like controller-runtime's envtest.

The Kubernetes release is pinned in ``hack/kube/go.mod`` (the one source of the version). The
binary is built once and cached under ``<cache>/kube/<version>/``; later builds only compare a
stamp. :func:`start` runs etcd and the API server on free loopback ports with generated
certificates and writes an admin kubeconfig (``O=system:masters``) to ``<run_dir>/kubeconfig``.

There is no kubelet, scheduler or controller manager: pods stay Pending, Jobs never run, owner
references are not garbage-collected, and no ``default`` service account exists (so the
``ServiceAccount`` admission plugin is off, as in envtest).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from liberator_stack.process import (
    Proc,
    Say,
    Server,
    StackError,
    cache_dir,
    file_lock,
    free_port,
    go_build_start,
    run_checked,
    spawn,
    wait_until,
)

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
    "start",
]

MODULE_DIR = Path(__file__).resolve().parents[1] / "kube"
PACKAGE_ROOT = "k8s.io/kubernetes/cmd"
# The programs hack/kube/tools.go pins, with the minutes a clean build takes on 2 cores (the
# apiserver ~5 min after ~15 s of downloads; the others with its build cache warm, measured).
COMPONENTS = {
    "kube-apiserver": 6,
    "kube-controller-manager": 2,
    "kube-scheduler": 1,
    "kube-proxy": 1,
    "kubelet": 2,
}
ETCD = "/usr/bin/etcd"
ETCD_PACKAGE = "etcd-server"
SERVICE_CIDR = "10.0.0.0/24"
START_TIMEOUT = 90.0
PORT_ATTEMPTS = 3

_REQUIRE = re.compile(
    r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v1\.(\d+)\.(\d+))\s*(?://.*)?$", re.MULTILINE
)
_REPLACE = re.compile(
    r"^\s*(?:replace\s+)?(k8s\.io/[\w.-]+)\s+=>\s+(\S+)(?:\s+(\S+))?\s*$", re.MULTILINE
)


# -- the pinned release ---------------------------------------------------------------------------


def read_go_mod() -> str:
    path = MODULE_DIR / "go.mod"
    try:
        return path.read_text()
    except OSError as error:
        raise StackError(f"cannot read {path} (the kube-apiserver build module): {error}") from None


def pinned_version(go_mod: str) -> str:
    """The ``k8s.io/kubernetes`` version required by the build module's go.mod text."""
    found = _REQUIRE.findall(go_mod)
    if len(found) != 1:
        raise StackError(
            "hack/kube/go.mod must require k8s.io/kubernetes exactly once, as "
            f"'require k8s.io/kubernetes v1.<minor>.<patch>'; found {len(found)}"
        )
    return str(found[0][0])


def check_staging_replaces(go_mod: str, version: str) -> None:
    """Each k8s.io staging module must be replaced by its release matching ``version``.

    k8s.io/kubernetes points them at folders of its own repository (absent from the proxy's zip);
    a mismatched release compiles against the wrong API and fails late, so fail early instead.
    """
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if match is None:
        raise StackError(
            f"k8s.io/kubernetes version {version!r} in hack/kube/go.mod is not v1.<minor>.<patch>"
        )
    want = f"v0.{match[1]}.{match[2]}"
    replaces = _REPLACE.findall(go_mod)
    if not replaces:
        raise StackError(
            "hack/kube/go.mod has no 'replace k8s.io/<name> => k8s.io/<name> "
            f"{want}' lines; add one per staging module of k8s.io/kubernetes "
            f"{version}"
        )
    for name, target, target_version in replaces:
        if target != name or target_version != want:
            raise StackError(
                f"hack/kube/go.mod: replace {name} => {target} {target_version} "
                f"should be '{name} => {name} {want}' for k8s.io/kubernetes "
                f"{version}"
            )


def binary_path(name: str, version: str) -> Path:
    """Where the built ``name`` (one of :data:`COMPONENTS`) of ``version`` is cached."""
    return cache_dir() / "kube" / version / name


def apiserver_path(version: str) -> Path:
    return binary_path("kube-apiserver", version)


def _ldflags(version: str) -> str:
    # Without these the binary reports v0.0.0-master on /version, and clients that gate on the
    # server version (native sidecars, kubectl skew warnings) would misjudge it.
    major, minor, _ = version.lstrip("v").split(".")
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _stamp(version: str) -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((MODULE_DIR / name).read_bytes())
    digest.update(_ldflags(version).encode())
    return digest.hexdigest()


# -- build ----------------------------------------------------------------------------------------


def build(say: Say) -> None:
    """Build kube-apiserver at the pinned release (cached), and make sure etcd is installed."""
    build_components(say, ("kube-apiserver",))
    _install_etcd(say)


def build_components(say: Say, names: Sequence[str]) -> None:
    """Build each of ``names`` (from :data:`COMPONENTS`) at the pinned release, once (cached)."""
    go_mod = read_go_mod()
    version = pinned_version(go_mod)
    check_staging_replaces(go_mod, version)
    stamp = _stamp(version)
    for name in names:
        if name not in COMPONENTS:
            raise StackError(
                f"unknown Kubernetes component {name!r}; choose from {', '.join(COMPONENTS)}"
            )
        _build_one(say, name, version, stamp)


def _build_one(say: Say, name: str, version: str, stamp: str) -> None:
    target = binary_path(name, version)
    stamp_file = target.with_name(f"{name}.stamp")
    # Two runs on one cache (a test session and make test) would race on the .partial file.
    with file_lock(target.with_name(f"{name}.lock")):
        if target.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
            return
        _go_build(say, name, version, target)
        stamp_file.write_text(stamp + "\n")


def _go_build(say: Say, name: str, version: str, target: Path) -> None:
    go, log = go_build_start(say, name, version, COMPONENTS[name])
    env = dict(os.environ)
    # -mod=mod lets go fill in go.sum entries a newer Go wants; go.sum pins the content anyway.
    env["GOFLAGS"] = f"{env.get('GOFLAGS', '')} -mod=mod -buildvcs=false".strip()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{name}.partial")
    started = time.monotonic()
    run_checked(
        [
            go,
            "build",
            "-p",
            "2",
            "-trimpath",
            f"-ldflags={_ldflags(version)}",
            "-o",
            str(partial),
            f"{PACKAGE_ROOT}/{name}",
        ],
        cwd=MODULE_DIR,
        log=log,
        env=env,
        what=f"go build {name} {version}",
    )
    os.replace(partial, target)
    say(f"built {name} {version} in {time.monotonic() - started:.0f}s: {target}")


def _install_etcd(say: Say) -> None:
    if Path(ETCD).exists():
        return
    if shutil.which("apt-get") is None:
        raise StackError(
            f"etcd is missing at {ETCD} and apt-get is not available: install "
            f"Debian's {ETCD_PACKAGE} (etcd 3.4+)"
        )
    say(f"installing {ETCD_PACKAGE} with apt-get (about 30 s)")
    log = cache_dir() / "logs" / "apt-etcd.log"
    run_checked(["apt-get", "update", "-qq"], log=log, what="apt-get update")
    run_checked(
        ["apt-get", "install", "-y", "-qq", ETCD_PACKAGE],
        log=log,
        what=f"apt-get install {ETCD_PACKAGE}",
    )


# -- certificates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    """The certificate, PEM encoded."""
    key_pem: bytes
    """The unencrypted private key (PKCS#8), PEM encoded."""

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.crt`` and ``<stem>.key`` (mode 0600); return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    # Backdated a little: the API server rejects certificates "not yet valid" on clock skew.
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=365)
    )


def new_ca(common_name: str) -> KeyPair:
    """A self-signed certificate authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = _validity(
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            key_cert_sign=True,
            crl_sign=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    cert = builder.sign(key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_cert(
    ca: KeyPair,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    organizations: Sequence[str] = (),
    client: bool = False,
) -> KeyPair:
    """A leaf certificate signed by ``ca``: a server certificate for ``hosts`` (IP addresses or
    DNS names), or a client certificate when ``client`` (``organizations`` become groups)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise StackError("issue_cert needs a CA made by new_ca (an EC key)")
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = _validity(
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
    )
    builder = builder.add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


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
    paths.sa_private.write_bytes(_key_pem(sa_key))
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


def _etcd_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"etcd Version:\s*(\S+)", out)
    return match[1] if match else "unknown"


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return int(response.status), bytes(response.read())


def _start_etcd(run_dir: Path, data_dir: Path) -> tuple[Proc, str]:
    client, peer = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    argv = [
        ETCD,
        "--name=liberator",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=liberator={peer_url}",
        "--initial-cluster-state=new",
        # A 1 GiB quota (default 2) and a snapshot every 5000 writes (default 100000) keep a
        # test cluster's disk and memory low.
        "--quota-backend-bytes=1073741824",
        "--snapshot-count=5000",
        "--logger=zap",
        "--log-level=warn",
    ]
    proc = spawn("etcd", argv, run_dir / "etcd.log")

    def healthy() -> bool:
        status, body = _get(f"{client_url}/health")
        return status == 200 and json.loads(body).get("health") == "true"

    wait_until(proc, healthy, timeout=30, what="etcd")
    return proc, client_url


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
        status, body = _get(f"{server}/readyz", context)
        if status != 200 or body.strip() != b"ok":
            return False
        # The system namespaces controller creates "default" a moment after readyz; tests that
        # start right away would otherwise race it.
        status, _ = _get(f"{server}/api/v1/namespaces/default", context)
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
            etcd, etcd_url = _start_etcd(run_dir, data_dir)
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
            "etcd_version": _etcd_version(ETCD),
            "kubeconfig": str(kubeconfig),
            "ca": str(pki.ca),
        },
        run_dir=run_dir,
    )
