"""The user's documentation lives in the project: every link in README.md and docs/ resolves inside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_docs_points_at_a_file_of_the_project():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            resolved = (page.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_user_s_pages_name_no_file_outside_the_project():
    """The README once sent users to `../shared/contract.md`, which a clone does not have."""
    for page in (ROOT / "README.md", ROOT / "docs" / "reference.md"):
        text = page.read_text(encoding="utf-8")
        assert "../" not in text.replace("](../", "]("), page.name  # links are checked above
