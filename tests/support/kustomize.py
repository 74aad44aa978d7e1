"""Overlays of deploy/ as a user writes them, for the tests that render them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["overlay"]


def overlay(
    folder: Path, resources: Sequence[Path], components: Sequence[Path] = (), **more: Any
) -> Path:
    """Write a kustomization over ``resources`` and ``components`` (and ``more`` fields, such as
    ``images``) into ``folder``, and return the folder. kustomize takes only relative paths to
    other kustomizations."""
    folder.mkdir(parents=True, exist_ok=True)
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(path, folder) for path in resources],
    }
    if components:
        kustomization["components"] = [os.path.relpath(path, folder) for path in components]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({**kustomization, **more}))
    return folder
