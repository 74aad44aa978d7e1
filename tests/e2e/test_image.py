"""The Dockerfile and the manifests agree (no server, no Docker engine).

No image is built here (``make image`` and the cluster tier build and run it), so this checks
what a build has to get right: two stages,
a numeric non-root user that the Deployments' ``runAsUser`` matches, the ``liberator`` console
script as entrypoint, every ``liberator <subcommand>`` (and its flags) that deploy/ and the
operator's builders run, and one image name:tag everywhere: the Dockerfile's build line, tagged
with the version in pyproject.toml.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from liberator_operator.job import build_seed_job
from liberator_operator.settings import DEFAULT_IMAGE, OperatorSettings
from liberator_operator.sidecar import build_sidecar
from liberator_publisher.cli import available, load
from liberator_stack.deploy import render
from tests.support import kustomize
from tests.test_operator.builders import publisher

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD_LINE = re.compile(r"^# Build: docker build -t (?P<ref>\S+) \.$", re.MULTILINE)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            found.append([])
        assert found, "the Dockerfile must start with FROM"
        found[-1].append(instruction)
    return found


def image_reference() -> str:
    match = BUILD_LINE.search((ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile names its build: '# Build: docker build -t NAME:TAG .'"
    return match["ref"]


def containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) of every pod template."""
    found = []
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod:
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                found.append((doc["metadata"]["name"], pod, container))
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return stages((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def deployed() -> list[dict[str, Any]]:
    return render(ROOT / "deploy") + render(ROOT / "deploy" / "overlays" / "local")


def final(dockerfile: list[list[tuple[str, str]]], instruction: str) -> list[str]:
    return [args for name, args in dockerfile[-1] if name == instruction]


def test_multi_stage_and_only_the_built_venv_reaches_the_final_stage(
    dockerfile: list[list[tuple[str, str]]],
) -> None:
    assert len(dockerfile) >= 2
    build_stage = dockerfile[0][0][1].split()
    assert build_stage[1:] == ["AS", "build"] or build_stage[1:] == ["as", "build"]
    copies = final(dockerfile, "COPY")
    assert copies and all(c.startswith("--from=build ") for c in copies), copies
    # Every path the wheel is built from is copied into the build stage.
    sources = {part for name, args in dockerfile[0] if name == "COPY" for part in args.split()[:-1]}
    packages = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"]} | {
        p.split("/")[0] for p in packages
    }
    assert needed <= sources, f"not copied into the build stage: {needed - sources}"


# The python3 each Debian release ships (the Dockerfile installs Debian's python3).
DEBIAN_PYTHON = {"bookworm": (3, 11), "trixie": (3, 13)}


def test_base_python_satisfies_requires_python(dockerfile: list[list[tuple[str, str]]]) -> None:
    required = PYPROJECT["project"]["requires-python"]
    minimum = tuple(int(p) for p in required.removeprefix(">=").split("."))
    for stage in dockerfile:
        match = re.match(r"debian:(\w+)-slim\b", stage[0][1])
        assert match, f"stage base is not debian:<release>-slim: {stage[0][1]}"
        assert DEBIAN_PYTHON[match[1]] >= minimum
        runs = " ".join(args for word, args in stage if word == "RUN")
        assert "apt-get install" in runs and "python3" in runs, "Debian's python3 is installed"


def test_final_stage_runs_as_a_numeric_non_root_user(
    dockerfile: list[list[tuple[str, str]]], deployed: list[dict[str, Any]]
) -> None:
    [user] = final(dockerfile, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "runAsNonRoot can only verify a numeric user"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    workloads = containers(deployed)
    assert {name for name, _, _ in workloads} >= {"liberator-operator", "liberator-eventstore"}
    for name, pod, container in workloads:
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context.get("runAsNonRoot") is True, name
        assert context.get("runAsUser") == int(uid), f"{name}: runAsUser is not the image's"
        if gid:
            assert context.get("runAsGroup") == int(gid), name


def test_entrypoint_is_the_console_script_on_the_path(
    dockerfile: list[list[tuple[str, str]]],
) -> None:
    [entrypoint] = final(dockerfile, "ENTRYPOINT")
    command = json.loads(entrypoint)
    scripts = PYPROJECT["project"]["scripts"]
    assert command == ["liberator"] and "liberator" in scripts
    assert scripts["liberator"] == "liberator_publisher.cli:main"
    # The console script is installed into the venv that the build stage creates.
    venvs = [
        args.split()[-1] for name, args in dockerfile[0] if name == "RUN" and "-m venv" in args
    ]
    assert venvs, "the build stage creates a virtual environment"
    [env] = final(dockerfile, "ENV")
    assert f"PATH={venvs[0]}/bin:" in env


def invoked(container: dict[str, Any]) -> list[str]:
    """The ``liberator`` argv a container runs (the image's ENTRYPOINT unless ``command``)."""
    command = container.get("command")
    if command:
        assert command[0] == "liberator", f"{container['name']} runs {command[0]}, not liberator"
        return [*command[1:], *container.get("args", [])]
    return list(container.get("args", []))


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the real subcommand's parser (fails on an unknown command or flag)."""
    name, *rest = argv
    assert name in available(), f"liberator {name} is not a subcommand"
    command = load(available()[name][0])
    parser = argparse.ArgumentParser(prog=f"liberator {name}")
    command.configure(parser)
    try:
        return parser.parse_args(rest)
    except SystemExit:
        pytest.fail(f"liberator {shlex.join(argv)}: the subcommand refuses these arguments")


def test_every_subcommand_that_deploy_and_the_builders_run_exists(
    deployed: list[dict[str, Any]],
) -> None:
    settings = OperatorSettings()
    runs = [invoked(c) for _, _, c in containers(deployed)]
    runs.append(invoked(build_sidecar(publisher(), settings, port=8099, native=True)))
    seed = build_seed_job(
        "shop",
        "initial",
        uid="u-1",
        spec={"publisher": "quotes"},
        publisher=publisher(),
        settings=settings,
    )
    runs += [invoked(c) for _, _, c in containers([seed])]
    assert {argv[0] for argv in runs} == {"operator", "eventstore", "publish", "seed"}
    for argv in runs:
        parse(argv)


def test_a_wrong_flag_is_caught_by_the_subcommand_parser() -> None:
    """The control for the test above: a misspelt flag does not pass."""
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        parse(["eventstore", "--subscriptions=x"])
    with pytest.raises(AssertionError, match="not a subcommand"):
        parse(["event-store"])


def test_one_image_reference_everywhere(
    deployed: list[dict[str, Any]], dockerfile: list[list[tuple[str, str]]]
) -> None:
    reference = image_reference()
    name, _, tag = reference.rpartition(":")
    assert tag == PYPROJECT["project"]["version"], "the image tag is the package version"
    [labels] = final(dockerfile, "LABEL")
    assert f'org.opencontainers.image.version="{tag}"' in labels
    assert reference == DEFAULT_IMAGE
    images = {c["image"] for _, _, c in containers(deployed)}
    env_images = {
        e["value"]
        for _, _, c in containers(deployed)
        for e in c.get("env", [])
        if e["name"] == "LIBERATOR_OPERATOR_IMAGE"
    }
    assert images | env_images == {reference}
    for kustomization in (ROOT / "deploy").rglob("kustomization.yaml"):
        for entry in yaml.safe_load(kustomization.read_text()).get("images", []):
            assert entry["name"] == name, kustomization
            assert entry.get("newTag", tag) == tag, kustomization
            assert entry.get("newName", name) == name, kustomization


def test_the_size_target_is_documented() -> None:
    # The Dockerfile states the target; docs/operations.md states the same target and the size
    # measured, so a reader sees whether it is met.
    target = re.search(r"^# Size target: under (\d+) MB", (ROOT / "Dockerfile").read_text(), re.M)
    assert target, "the Dockerfile states its size target"
    docs = (ROOT / "docs" / "operations.md").read_text()
    measured = re.search(r"\*\*Size: (\d+) MB uncompressed\*\*.*?under (\d+) MB", docs, re.S)
    assert measured, "docs/operations.md states the measured size against the target"
    assert measured.group(2) == target.group(1)
    assert int(measured.group(1)) > 0


def test_retagging_in_an_overlay_moves_every_process(tmp_path: Path) -> None:
    """An overlay's ``images:`` entry is the one value: the operator's container takes it, and
    the operator hands its own image to sidecars and seed Jobs (no env keeps the old one)."""
    name = image_reference().rpartition(":")[0]
    retagged = kustomize.overlay(
        tmp_path,
        [ROOT / "deploy" / "overlays" / "local"],
        images=[
            {"name": name, "newName": "registry.example.com/team/liberator", "newTag": "7.7.7"}
        ],
    )
    docs = render(retagged)
    text = yaml.safe_dump_all(docs)
    assert image_reference() not in text and f"{name}:" not in text
    operator = next(c for workload, _, c in containers(docs) if workload == "liberator-operator")
    assert operator["image"] == "registry.example.com/team/liberator:7.7.7"
    env = {e["name"]: e for e in operator["env"]}
    assert "LIBERATOR_OPERATOR_IMAGE" not in env
    assert env["LIBERATOR_OPERATOR_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.name"
    )
