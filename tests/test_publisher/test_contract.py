"""The sidecar contract: one list, documented in docs/publisher.md, read by Settings."""

from __future__ import annotations

import re
from pathlib import Path

from liberator_publisher.core import settings as settings_module
from liberator_publisher.core.contract import CONTRACT, STATUS_KEY_PREFIX, status_key

DOC = Path(__file__).resolve().parents[2] / "docs" / "publisher.md"


def contract_table() -> str:
    """The markdown table docs/publisher.md must carry, built from CONTRACT."""
    lines = ["| Variable | Required | Default | Meaning |", "|---|---|---|---|"]
    for var in CONTRACT:
        # Code-like defaults in backticks (so <collection> is not read as HTML), prose as is.
        default = var.default if " " in var.default or not var.default else f"`{var.default}`"
        lines.append(
            f"| `{var.name}` | {'yes' if var.required else 'no'} | {default} | {var.doc} |"
        )
    return "\n".join(lines)


def test_names_are_unique_and_well_formed() -> None:
    names = [var.name for var in CONTRACT]
    assert len(names) == len(set(names))
    for var in CONTRACT:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", var.name), var.name
        assert var.doc.strip() and "\n" not in var.doc, var.name
        assert var.required == (var.default == ""), var.name  # optional ones say their default


def test_tuning_variables_are_in_the_contract() -> None:
    names = {var.name for var in CONTRACT}
    assert {
        "LIBERATOR_BATCH_SIZE",
        "LIBERATOR_MAX_AWAIT_MS",
        "LIBERATOR_SWEEP_INTERVAL_SECONDS",
        "LIBERATOR_PENDING_AGE_SECONDS",
    } <= names


def test_docs_carry_the_contract_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert contract_table() in text, (
        "docs/publisher.md is out of step with CONTRACT; paste this table under "
        f"'## Sidecar contract':\n{contract_table()}"
    )


def test_docs_list_every_variable_and_no_other() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Sidecar contract", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.MULTILINE))
    assert listed == {var.name for var in CONTRACT}


def test_settings_reads_every_variable() -> None:
    # Every name appears in a read of the settings module; its reader refuses names outside
    # the contract, so the two cannot drift apart silently.
    source = Path(settings_module.__file__).read_text(encoding="utf-8")
    read = set(re.findall(r'reader\.(?:required|optional)\(\s*"([A-Z0-9_]+)"', source))
    assert read == {var.name for var in CONTRACT}


def test_status_key() -> None:
    assert status_key("shop/quotes") == f"{STATUS_KEY_PREFIX}shop/quotes"
