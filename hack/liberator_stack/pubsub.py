"""Google's Pub/Sub emulator from the Google Cloud SDK (Java 17)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from liberator_stack.nodeconf import listen_host
from liberator_stack.process import (
    Say,
    Server,
    StackError,
    free_port,
    log_matches,
    spawn,
    wait_until,
)

PROJECT = "liberator-local"


def emulator_path() -> Path:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise StackError(
            "gcloud is not on PATH: install the Google Cloud SDK with its pubsub-emulator component"
        )
    root = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    path = Path(root) / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if not path.exists():
        raise StackError(
            f"the Pub/Sub emulator is missing at {path}: run "
            "'gcloud components install pubsub-emulator' (or apt-get install "
            "google-cloud-cli-pubsub-emulator)"
        )
    return path


def build(say: Say) -> None:
    emulator_path()
    if shutil.which("java") is None:
        raise StackError("java is not on PATH: the Pub/Sub emulator needs Java 17")


def start(run_dir: Path, port: int | None = None, host: str | None = None) -> Server:
    port = port or free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "pubsub.log"
    # One address only: the node IP for a stack that runs the node (host clients reach it too).
    listen = listen_host(host)
    proc = spawn("pubsub", [str(emulator_path()), f"--host={listen}", f"--port={port}"], log)
    wait_until(
        proc,
        log_matches(log, rf"Server started, listening on {port}"),
        timeout=60,
        what="Pub/Sub emulator",
    )
    host = f"{listen}:{port}"
    return Server(
        "pubsub",
        [proc],
        exports={"PUBSUB_EMULATOR_HOST": host, "LIBERATOR_PUBSUB_PROJECT": PROJECT},
        details={"port": str(port), "host": host},
        run_dir=run_dir,
    )
