"""The node's certificates and kubeconfigs, all made fresh for each start.

One CA signs the API server's and the kubelet's serving certificates and a client certificate
per component, each naming its built-in user (``system:kube-scheduler``, ...) so the default RBAC
applies. Everything lies under ``nodeconf.PKI_DIR``; keys are written with mode 0600.
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from liberator_stack import certs
from liberator_stack import nodeconf as nc

__all__ = ["node_pki", "write_kubeconfig"]


def node_pki() -> dict[str, Path]:
    """Every certificate of the node under PKI_DIR; the keys are file names."""
    ca = certs.new_ca("liberator-node-ca")
    out = nc.PKI_DIR
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def keep(stem: str, pair: certs.KeyPair) -> None:
        cert, key = pair.write(out, stem)
        files[f"{stem}.crt"], files[f"{stem}.key"] = cert, key

    keep("ca", ca)
    keep(
        "apiserver",
        certs.issue_cert(
            ca,
            "kube-apiserver",
            hosts=(
                nc.NODE_IP,
                "127.0.0.1",
                nc.KUBERNETES_SERVICE_IP,
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{nc.CLUSTER_DOMAIN}",
            ),
        ),
    )
    keep("kubelet-serving", certs.issue_cert(ca, nc.NODE_NAME, hosts=(nc.NODE_IP, nc.NODE_NAME)))
    clients = {
        "admin": ("liberator-admin", ("system:masters",)),
        "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
        "kubelet": (f"system:node:{nc.NODE_NAME}", ("system:nodes",)),
        "controller-manager": ("system:kube-controller-manager", ()),
        "scheduler": ("system:kube-scheduler", ()),
        "kube-proxy": ("system:kube-proxy", ()),
    }
    for stem, (name, groups) in clients.items():
        keep(stem, certs.issue_cert(ca, name, organizations=groups, client=True))
    sa = certs.new_ca("service-accounts")  # only its key is used
    sa_key = out / "sa.key"
    sa_key.touch(mode=0o600)
    sa_key.write_bytes(sa.key_pem)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    private = serialization.load_pem_private_key(sa.key_pem, password=None)
    (out / "sa.pub").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    files["sa.key"], files["sa.pub"] = sa_key, out / "sa.pub"
    return files


def write_kubeconfig(path: Path, server: str, pki: dict[str, Path], stem: str) -> Path:
    def data(name: str) -> str:
        return base64.b64encode(pki[name].read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "liberator-node",
                "cluster": {"server": server, "certificate-authority-data": data("ca.crt")},
            }
        ],
        "users": [
            {
                "name": stem,
                "user": {
                    "client-certificate-data": data(f"{stem}.crt"),
                    "client-key-data": data(f"{stem}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "liberator-node",
                "context": {"cluster": "liberator-node", "user": stem, "namespace": "default"},
            }
        ],
        "current-context": "liberator-node",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
