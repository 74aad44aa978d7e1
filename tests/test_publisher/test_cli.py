"""The ``liberator`` command line itself: its help lists every command with its own line."""

from __future__ import annotations

import pytest

from liberator_publisher.cli import main


def test_help_lists_every_command_with_its_own_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name, line in [
        ("publish", "run the change-data-capture sidecar"),
        ("seed", "publish every existing entity once to the seed topic"),
        ("operator", "run the Kubernetes operator (kopf)"),
    ]:
        assert f"  {name:12} {line}" in out, out
    assert "(from " not in out  # an entry point's own help, not where it came from


def test_an_unknown_command_is_refused_with_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["pubish"])
    assert exited.value.code == 2
    assert "invalid choice: 'pubish'" in capsys.readouterr().err
