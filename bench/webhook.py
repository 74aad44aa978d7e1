"""Injection webhook latency (docs/targets.md: p99 at most 5 ms in process, 100 ms via the API
server).

``python -m bench.webhook [--pods 200]`` from the repo root starts the local kube-apiserver, runs
``liberator operator`` with its webhook on 127.0.0.1, and creates ``--pods`` matching pods one by
one. It reports, from one run:

- the API server's own view: its ``apiserver_admission_webhook_admission_duration_seconds``
  histogram for our webhook (p50/p99 as bucket upper bounds; the buckets are coarse);
- pod CREATE round trips with injection, against the same in a namespace the webhook excludes
  (so the API server does not call it); the difference of the medians is the webhook's share;
- ``build_patch`` in process (the pure function the handler calls), over many calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from kubernetes import client, config  # noqa: E402

from liberator_operator.patch import build_patch  # noqa: E402
from liberator_operator.settings import OperatorSettings  # noqa: E402
from liberator_stack import Stack  # noqa: E402
from liberator_stack.process import free_port  # noqa: E402

METRIC = "apiserver_admission_webhook_admission_duration_seconds"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def webhook_histogram(kubectl_env: dict[str, str]) -> dict[float, float]:
    """Cumulative bucket counts of our webhook's admission duration, from /metrics."""
    text = subprocess.run(
        ["kubectl", "get", "--raw", "/metrics"],
        env=kubectl_env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{METRIC}_bucket") and 'name="inject.liberator.io"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket that holds quantile ``q`` of the new observations."""
    deltas = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = deltas[-1][1] if deltas else 0.0
    for le, count in deltas:
        if total and count >= q * total:
            return le
    return float("nan")


def create_pods(
    core: client.CoreV1Api, namespace: str, prefix: str, count: int, labels: dict[str, str]
) -> tuple[list[float], int]:
    """Round-trip seconds of each pod CREATE, and how many came back with a sidecar."""
    seconds: list[float] = []
    injected = 0
    for i in range(count):
        body = {
            "metadata": {"name": f"{prefix}-{i}", "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        }
        start = time.perf_counter()
        pod = core.create_namespaced_pod(namespace, body)
        seconds.append(time.perf_counter() - start)
        injected += bool(pod.spec.init_containers)
    return seconds, injected


def in_process(calls: int) -> list[float]:
    """Seconds per ``build_patch`` for a pod in a namespace with five publishers."""
    publishers: list[Any] = [
        {
            "namespace": "shop",
            "name": f"p{i}",
            "spec": {
                "selector": {"matchLabels": {"app": f"svc-{i}"}},
                "allowMatchAll": False,
                "mongo": {
                    "uriSecretRef": {"name": "mongo", "key": "uri"},
                    "database": "sales",
                    "collection": f"c{i}",
                },
                "entity": {"type": "quote", "idField": "_id", "eventContextField": "_event"},
                "pubsub": {"project": "p", "topic": "integration-events"},
                "redis": {"url": "redis://redis:6379/0"},
                "sidecar": {},
                "deletionPolicy": "Retain",
                "paused": False,
            },
        }
        for i in range(5)
    ]
    body = {
        "metadata": {"name": "app", "namespace": "shop", "labels": {"app": "svc-3", "tier": "api"}},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "ports": [{"containerPort": 8080}]}]
        },
    }
    settings = OperatorSettings()
    times: list[float] = []
    for _ in range(calls):
        start = time.perf_counter()
        result = build_patch(body, "shop", publishers, settings, native=True)
        times.append(time.perf_counter() - start)
        assert result.ops
    return times


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=200, help="pods created per measurement")
    parser.add_argument("--calls", type=int, default=20_000, help="in-process build_patch calls")
    return parser.parse_args()


def install_crds(kubectl_env: dict[str, str]) -> None:
    """Apply crds/ and wait until the EntityPublisher kind is served."""
    subprocess.run(
        ["kubectl", "apply", "-f", str(ROOT / "crds")],
        env=kubectl_env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "kubectl",
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/entitypublishers.liberator.io",
        ],
        env=kubectl_env,
        check=True,
        capture_output=True,
    )


def create_publisher(core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    """The namespaces, and one EntityPublisher whose selector the measured pods match."""
    for ns in ("bench", "liberator-system"):
        core.create_namespace({"metadata": {"name": ns}})
    custom.create_namespaced_custom_object(
        "liberator.io",
        "v1alpha1",
        "bench",
        "entitypublishers",
        {
            "apiVersion": "liberator.io/v1alpha1",
            "kind": "EntityPublisher",
            "metadata": {"name": "quotes"},
            "spec": {
                "selector": {"matchLabels": {"app": "quotes"}},
                "mongo": {
                    "uriSecretRef": {"name": "quotes-mongo"},
                    "database": "sales",
                    "collection": "quotes",
                },
                "entity": {"type": "quote"},
                "pubsub": {"project": "bench-project"},
                "redis": {"url": "redis://127.0.0.1:1/0"},
            },
        },
    )


def start_operator(log: Path, kubectl_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``liberator operator`` with its webhook on a free loopback port, configured by itself."""
    port = free_port()
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                str(Path(sys.executable).with_name("liberator")),
                "operator",
                "--standalone",
                "--webhook-addr",
                "127.0.0.1",
                "--webhook-port",
                str(port),
                "--webhook-configure",
                "liberator-injector",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**kubectl_env, "LIBERATOR_OPERATOR_NAMESPACE": "liberator-system"},
        )


def webhook_live(core: client.CoreV1Api, operator: subprocess.Popen[bytes]) -> bool:
    """Until a dry-run pod comes back injected (True), or 120 s or the operator's exit (False)."""
    deadline = time.monotonic() + 120
    while True:
        probe = core.create_namespaced_pod(
            "bench",
            {
                "metadata": {"name": "probe", "labels": {"app": "quotes"}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]},
            },
            dry_run="All",
        )
        if probe.spec.init_containers:
            return True
        if time.monotonic() > deadline or operator.poll() is not None:
            return False
        time.sleep(0.5)


def main() -> int:
    args = arguments()
    patch_times = in_process(args.calls)
    run_dir = Path(tempfile.mkdtemp(prefix="liberator-bench-webhook-"))
    with Stack(run_dir) as stack:
        kubeconfig = stack.up(("kube",))["KUBECONFIG"]
        kubectl_env = {**os.environ, "KUBECONFIG": kubeconfig}
        install_crds(kubectl_env)
        api = config.new_client_from_config(config_file=kubeconfig)
        core = client.CoreV1Api(api)
        create_publisher(core, client.CustomObjectsApi(api))
        log = run_dir / "operator.log"
        operator = start_operator(log, kubectl_env)
        try:
            if not webhook_live(core, operator):
                print(f"webhook not live; log {log}", file=sys.stderr)
                return 1
            create_pods(core, "bench", "warm", 10, {"app": "quotes"})
            before = webhook_histogram(kubectl_env)
            with_hook, injected = create_pods(core, "bench", "pod", args.pods, {"app": "quotes"})
            after = webhook_histogram(kubectl_env)
            without, _ = create_pods(core, "liberator-system", "base", args.pods, {"app": "quotes"})
        finally:
            operator.terminate()
            operator.wait(timeout=30)
        api.close()
    return report(
        args,
        patch_times,
        histograms=(before, after),
        with_hook=with_hook,
        without=without,
        injected=injected,
    )


def report(
    args: argparse.Namespace,
    patch_times: list[float],
    *,
    histograms: tuple[dict[float, float], dict[float, float]],
    with_hook: list[float],
    without: list[float],
    injected: int,
) -> int:
    """Print the figures (aligned, then as JSON); 1 when a target is missed."""
    before, after = histograms
    ms = 1000.0
    figures: dict[str, Any] = {
        "pods": args.pods,
        "injected": injected,
        "apiserver_webhook_p50_ms_bucket": histogram_quantile(before, after, 0.5) * ms,
        "apiserver_webhook_p99_ms_bucket": histogram_quantile(before, after, 0.99) * ms,
        "create_with_webhook_p50_ms": quantile(with_hook, 0.5) * ms,
        "create_with_webhook_p99_ms": quantile(with_hook, 0.99) * ms,
        "create_without_webhook_p50_ms": quantile(without, 0.5) * ms,
        "create_without_webhook_p99_ms": quantile(without, 0.99) * ms,
        "webhook_share_p50_ms": (statistics.median(with_hook) - statistics.median(without)) * ms,
        "build_patch_calls": args.calls,
        "build_patch_p50_ms": quantile(patch_times, 0.5) * ms,
        "build_patch_p99_ms": quantile(patch_times, 0.99) * ms,
    }
    for key, value in figures.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:34} {shown}")
    print(json.dumps(figures))
    ok = (
        figures["injected"] == args.pods
        and figures["build_patch_p99_ms"] <= 5
        and figures["apiserver_webhook_p99_ms_bucket"] <= 100
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
