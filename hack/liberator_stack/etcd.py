"""etcd for the API servers: Debian's ``etcd-server`` (3.4+) at ``/usr/bin/etcd``, installed when
missing, run on free loopback ports with small quotas. The caller owns the data folder: the local
kube-apiserver wipes it on a fresh start and keeps it on a restart."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from liberator_stack.process import (
    Proc,
    Say,
    StackError,
    cache_dir,
    free_port,
    http_get,
    run_checked,
    spawn,
    wait_until,
)

__all__ = ["ETCD", "etcd_version", "install_etcd", "start_etcd"]

ETCD = "/usr/bin/etcd"
ETCD_PACKAGE = "etcd-server"


def install_etcd(say: Say) -> None:
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


def etcd_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"etcd Version:\s*(\S+)", out)
    return match[1] if match else "unknown"


def start_etcd(run_dir: Path, data_dir: Path) -> tuple[Proc, str]:
    """etcd keeping its data in ``data_dir``, once healthy; the process and its client URL."""
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
        status, body = http_get(f"{client_url}/health")
        return status == 200 and json.loads(body).get("health") == "true"

    wait_until(proc, healthy, timeout=30, what="etcd")
    return proc, client_url
