"""The injection webhook's endpoint and its MutatingWebhookConfiguration.

kopf serves the admission requests (``kopf.WebhookServer``). In a cluster its certificate is a
cert-manager Secret mounted as files (``certfile``/``pkeyfile``), and deploy/ holds the
configuration with cert-manager's CA injection. For the local stack ``liberator operator``
makes a self-signed certificate (:func:`self_signed_certificate`) and applies the configuration
itself (:func:`build_webhook_configuration`, the same shape as deploy/).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "CONFIGURATION_NAME",
    "FAILURE_POLICY",
    "HANDLER_ID",
    "TIMEOUT_SECONDS",
    "build_webhook_configuration",
    "self_signed_certificate",
]

HANDLER_ID = "inject"
"""The kopf handler id, which is also the URL path (``/inject``)."""
CONFIGURATION_NAME = "liberator-injector"
WEBHOOK_NAME = "inject.liberator.io"
# Ignore: a webhook outage must never block the cluster's pods (app rollouts, node recovery).
# A pod admitted without the sidecar loses no events: the sidecar of any other replica, or the
# next one injected, resumes the change stream from its checkpoint. See docs/operator.md.
FAILURE_POLICY = "Ignore"
TIMEOUT_SECONDS = 3


def self_signed_certificate(hosts: Iterable[str]) -> tuple[bytes, bytes]:
    """A self-signed server certificate (PEM) and its key (PEM) for ``hosts`` (IPs or DNS)."""
    names = list(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def build_webhook_configuration(
    client_config: dict[str, Any],
    *,
    excluded_namespaces: Iterable[str],
    name: str = CONFIGURATION_NAME,
    failure_policy: str = FAILURE_POLICY,
    timeout_seconds: int = TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration for Pod CREATE.

    ``client_config`` is ``{"url": ..., "caBundle": ...}`` or ``{"service": ...}`` pointing at the
    server's root; the handler's path is appended.
    """
    config = dict(client_config)
    if "url" in config:
        config["url"] = f"{config['url'].rstrip('/')}/{HANDLER_ID}"
    if "service" in config:
        config["service"] = {**config["service"], "path": f"/{HANDLER_ID}"}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "liberator"}},
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "clientConfig": config,
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "failurePolicy": failure_policy,
                "sideEffects": "None",
                "timeoutSeconds": timeout_seconds,
                # Called again if a later webhook changes the pod; the patch is idempotent.
                "reinvocationPolicy": "IfNeeded",
                "matchPolicy": "Equivalent",
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": sorted(set(excluded_namespaces)),
                        }
                    ]
                },
            }
        ],
    }
