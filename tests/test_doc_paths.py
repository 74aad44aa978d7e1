"""Every repository path that the code and the docs cite exists, and no file outside the
repository is cited (a newcomer follows these; a dead one sends them nowhere). Pure: reads the
tracked files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = (
    "docs",
    "hack",
    "bench",
    "deploy",
    "crds",
    "examples",
    "tests",
    "publisher",
    "operator",
    ".ci",
)
# A path as text: one of the top folders, then path characters, ending in a file extension.
CITED = re.compile(
    r"(?<![\w/.~-])((?:"
    + "|".join(re.escape(t) for t in TOP)
    + r")/[\w./-]*\w\.(?:md|py|yaml|yml|json|java|xml|mod|sum|txt|sh|toml))\b"
)
OUTSIDE = re.compile(r"\bDESIGN\.md\b|\bNOTES-local-stack\.md\b|\.\./shared/")


def tracked() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [
        ROOT / name
        for name in out
        if name.endswith((".py", ".md", ".yaml", ".yml", ".java", ".toml"))
        or name in ("Makefile", "Dockerfile", "hack/stack", ".ci/run")
    ]


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
"""A Markdown link's target, without its anchor."""


def test_every_cited_path_exists() -> None:
    missing, checked = [], 0
    for path in tracked():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in CITED.finditer(text):
            cited = match.group(1).rstrip(".")
            if "<" in cited or "*" in cited:
                continue
            checked += 1
            if not (ROOT / cited).exists():
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{path.relative_to(ROOT)}:{line}: {cited}")
        if path.suffix != ".md":
            continue
        for match in LINK.finditer(text):
            target = match.group(1)
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            checked += 1
            if not (path.parent / target).exists():
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{path.relative_to(ROOT)}:{line}: link {target}")
    assert missing == [], "cited paths that do not exist:\n" + "\n".join(missing)
    assert checked > 100  # the patterns still find the citations


def test_nothing_outside_the_repository_is_cited() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for path in tracked()
        if path.name != "test_doc_paths.py"
        for text in [path.read_text(encoding="utf-8", errors="replace")]
        for m in OUTSIDE.finditer(text)
    ]
    assert cited == [], "files outside the repository cited:\n" + "\n".join(cited)
