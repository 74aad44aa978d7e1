"""The operator's environment settings and command-line flags: good values and bad ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from liberator_operator.settings import OperatorSettings, SettingsError


def test_defaults() -> None:
    settings = OperatorSettings.from_env({})
    assert settings == OperatorSettings()
    assert settings.pubsub_emulator_host is None


def test_values_are_read() -> None:
    settings = OperatorSettings.from_env(
        {
            "LIBERATOR_OPERATOR_IMAGE": "example/liberator:2",
            "LIBERATOR_OPERATOR_NAMESPACE": "ops",
            "LIBERATOR_OPERATOR_SIDECAR_MODE": "container",
            "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
            "LIBERATOR_OPERATOR_STATUS_INTERVAL": "1.5",
            "LIBERATOR_OPERATOR_SEED_INTERVAL": "2",
            "LIBERATOR_OPERATOR_RETRY_DELAY": "3",
            "LIBERATOR_OPERATOR_BACKOFF_MAX": "60",
        }
    )
    assert settings == OperatorSettings(
        image="example/liberator:2",
        namespace="ops",
        sidecar_mode="container",
        pubsub_emulator_host="127.0.0.1:8085",
        status_interval=1.5,
        seed_interval=2.0,
        retry_delay=3.0,
        backoff_max=60.0,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIBERATOR_OPERATOR_SIDECAR_MODE", "sometimes"),
        ("LIBERATOR_OPERATOR_IMAGE", "  "),
        ("LIBERATOR_OPERATOR_NAMESPACE", ""),
        ("PUBSUB_EMULATOR_HOST", "localhost"),
        ("LIBERATOR_OPERATOR_STATUS_INTERVAL", "often"),
        ("LIBERATOR_OPERATOR_SEED_INTERVAL", "-1"),
        ("LIBERATOR_OPERATOR_RETRY_DELAY", "0"),
        ("LIBERATOR_OPERATOR_BACKOFF_MAX", "1e9"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})


def run_operator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liberator_publisher.cli", "operator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_bad_environment_exits_2_with_one_line() -> None:
    result = run_operator(env={"LIBERATOR_OPERATOR_SIDECAR_MODE": "maybe", "PATH": "/usr/bin"})
    assert result.returncode == 2
    assert "LIBERATOR_OPERATOR_SIDECAR_MODE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--webhook-certfile", "/tmp/x.crt"], "--webhook-pkeyfile"),
        (["--webhook-port", "70000"], "--webhook-port"),
        (["--webhook-port", "many"], "--webhook-port"),
        (["--priority", "high"], "--priority"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(args: list[str], message: str) -> None:
    result = run_operator(*args)
    assert result.returncode == 2
    assert message in result.stderr
