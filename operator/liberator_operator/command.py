"""``liberator operator``: the control plane, a ``kopf run`` with Liberator's handlers and settings.

Flags choose what kopf's command line would (namespaces, peering, liveness) plus the webhook
endpoint; the rest comes from ``LIBERATOR_OPERATOR_*`` variables
(:class:`~liberator_operator.settings.OperatorSettings`).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import logging
import os
import random
import sys
import tempfile
from pathlib import Path

import kopf

from liberator_operator.cluster import Cluster
from liberator_operator.handlers import Runtime, register
from liberator_operator.settings import OperatorSettings, SettingsError
from liberator_operator.webhook import build_webhook_configuration, self_signed_certificate
from liberator_publisher.runtime.command import Command

__all__ = ["COMMAND", "kopf_settings"]

PEERING_NAME = "liberator"
OPERATOR_CONTAINER = "operator"  # the container's name in deploy/base/operator.yaml


def configure(parser: argparse.ArgumentParser) -> None:
    _kopf_arguments(parser)
    _webhook_arguments(parser)
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _kopf_arguments(parser: argparse.ArgumentParser) -> None:
    """What kopf's own command line would choose: namespaces, peering, liveness."""
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable); default all namespaces",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="run without peering (one replica only; for development)",
    )
    parser.add_argument(
        "--peering",
        default=PEERING_NAME,
        metavar="NAME",
        help="ClusterKopfPeering that replicas share (default %(default)s)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; default random, so exactly one replica acts",
    )
    parser.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="kopf health endpoint, e.g. http://0.0.0.0:8080/healthz",
    )


def _webhook_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--webhook-addr",
        default="0.0.0.0",
        metavar="ADDR",
        help="address the admission webhook listens on (default %(default)s)",
    )
    parser.add_argument(
        "--webhook-port",
        type=int,
        default=9443,
        metavar="PORT",
        help="port of the admission webhook (default %(default)s)",
    )
    parser.add_argument(
        "--webhook-certfile",
        type=Path,
        default=None,
        metavar="PEM",
        help="server certificate (a cert-manager Secret mounted as a file); "
        "without it a self-signed one is made",
    )
    parser.add_argument(
        "--webhook-pkeyfile",
        type=Path,
        default=None,
        metavar="PEM",
        help="private key of --webhook-certfile",
    )
    parser.add_argument(
        "--webhook-configure",
        default=None,
        metavar="NAME",
        help="create or replace the MutatingWebhookConfiguration NAME pointing at "
        "https://<--webhook-host>:<--webhook-port> (local stack; in a cluster "
        "deploy/ holds it)",
    )
    parser.add_argument(
        "--webhook-host",
        default="127.0.0.1",
        metavar="HOST",
        help="host name the API server uses with --webhook-configure (default %(default)s)",
    )


def kopf_settings(*, standalone: bool, server: kopf.WebhookServer) -> kopf.OperatorSettings:
    """kopf's settings: our prefix on its annotations and finalizer, events for warnings only."""
    ks = kopf.OperatorSettings()
    ks.persistence.finalizer = "liberator.io/finalizer"
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="liberator.io")
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="liberator.io", key="last-handled-configuration"
    )
    ks.posting.level = logging.WARNING
    ks.peering.clusterwide = True
    # Without the peering object a replica waits instead of acting alone next to another one.
    ks.peering.mandatory = not standalone
    ks.peering.lifetime = 30
    ks.admission.server = server
    ks.admission.managed = None  # deploy/ (or --webhook-configure) owns the configuration
    # A timer tick that runs when its object is deleted is waited for, then re-checked every
    # cancellation_polling seconds (kopf's default 60 s made deletions take a minute). Ticks are
    # short (Redis reads time out after 1 s, and a tick stops early once told), so check often.
    ks.background.cancellation_polling = 0.5
    ks.background.instant_exit_timeout = 0.1
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    return ks


def own_image(settings: OperatorSettings, cluster: Cluster) -> OperatorSettings:
    """Without ``LIBERATOR_OPERATOR_IMAGE``, sidecars and seed Jobs run the operator's own image.

    A kustomize ``images:`` entry retags containers, never environment values; reading the
    image from this pod (``LIBERATOR_OPERATOR_POD_NAME``) lets one entry move every process.
    """
    pod = os.environ.get("LIBERATOR_OPERATOR_POD_NAME", "").strip()
    if "LIBERATOR_OPERATOR_IMAGE" in os.environ or not pod:
        return settings
    image = cluster.pod_image(settings.namespace, pod, OPERATOR_CONTAINER)
    if image is None:
        raise SettingsError(
            f"LIBERATOR_OPERATOR_POD_NAME={pod!r}: no container "
            f"{OPERATOR_CONTAINER!r} in that pod of {settings.namespace}; set "
            "LIBERATOR_OPERATOR_IMAGE or the pod name from metadata.name"
        )
    return dataclasses.replace(settings, image=image)


def run(args: argparse.Namespace) -> int:
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        return _usage_error(str(exc))
    problem = _argument_problem(args)
    if problem:
        return _usage_error(problem)
    # The prefix names the object ([namespace/name]) on every handler line.
    kopf.configure(verbose=args.verbose, log_prefix=True)
    with tempfile.TemporaryDirectory(prefix="liberator-webhook-") as tmp:
        certfile, pkeyfile = _certificate(args, Path(tmp))
        server = kopf.WebhookServer(
            addr=args.webhook_addr,
            port=args.webhook_port,
            host=args.webhook_host,
            certfile=str(certfile),
            pkeyfile=str(pkeyfile),
        )
        cluster = Cluster()
        try:
            settings = own_image(settings, cluster)
        except SettingsError as exc:
            return _usage_error(str(exc))
        if args.webhook_configure:
            _configure_webhook(cluster, args, certfile, settings)
        _run_kopf(args, Runtime(settings=settings, cluster=cluster), server)
    return 0


def _usage_error(message: str) -> int:
    print(f"liberator operator: {message}", file=sys.stderr)
    return 2


def _argument_problem(args: argparse.Namespace) -> str:
    """What is wrong with flags that argparse cannot check alone; empty when nothing is."""
    if (args.webhook_certfile is None) != (args.webhook_pkeyfile is None):
        return "--webhook-certfile and --webhook-pkeyfile go together"
    if not 0 < args.webhook_port < 65536:
        return f"--webhook-port {args.webhook_port} is not a port (1-65535)"
    return ""


def _certificate(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    """The webhook's certificate and key files: the given ones, else self-signed ones in ``tmp``."""
    if args.webhook_certfile is not None:
        return args.webhook_certfile, args.webhook_pkeyfile
    cert, key = self_signed_certificate([args.webhook_host, "127.0.0.1", "localhost"])
    certfile, pkeyfile = tmp / "tls.crt", tmp / "tls.key"
    certfile.write_bytes(cert)
    pkeyfile.touch(mode=0o600)
    pkeyfile.write_bytes(key)
    return certfile, pkeyfile


def _configure_webhook(
    cluster: Cluster, args: argparse.Namespace, certfile: Path, settings: OperatorSettings
) -> None:
    """``--webhook-configure``: point the API server at this process, trusting ``certfile``."""
    url = f"https://{args.webhook_host}:{args.webhook_port}"
    ca = base64.b64encode(certfile.read_bytes()).decode()
    cluster.apply_webhook_configuration(
        build_webhook_configuration(
            {"url": url, "caBundle": ca},
            name=args.webhook_configure,
            excluded_namespaces=["kube-system", settings.namespace],
        )
    )


def _run_kopf(args: argparse.Namespace, runtime: Runtime, server: kopf.WebhookServer) -> None:
    registry = kopf.OperatorRegistry()
    register(registry, runtime)
    kopf.run(
        registry=registry,
        settings=kopf_settings(standalone=args.standalone, server=server),
        standalone=args.standalone,
        # kopf makes peering mandatory whenever a name is given, standalone or not.
        peering_name=None if args.standalone else args.peering,
        priority=args.priority if args.priority is not None else random.randint(1, 2**30),
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )


COMMAND = Command("operator", "run the Kubernetes operator (kopf)", configure, run)
