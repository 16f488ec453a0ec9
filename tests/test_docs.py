"""The documentation as a newcomer meets it: a short README, pages under docs/ whose links
resolve, the release files, and nothing that belongs to one machine or kills by name."""
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines (at most 220)"


def test_docs_pages_exist():
    names = {p.name for p in DOCS}
    for page in ("README.md", "faithfulness.md", "workflow.md", "flower.md",
                 "performance.md", "testing.md"):
        assert page in names, f"docs/{page} is missing"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_machine_paths_kill_by_name_or_issue_numbers(page):
    text = page.read_text()
    for pattern, what in ((r"\.\./shared", "a path of one machine (../shared)"),
                          (r"(?<![\w.])/(work|tmp|home)/", "an absolute machine path"),
                          (r"\bpkill\b|\bkillall\b", "a kill-by-name instruction"),
                          (r"\bissues?\s+#?\d+", "an issue number")):
        hit = re.search(pattern, text, flags=re.I)
        assert hit is None, f"{_rel(page)}: {what}: {text[max(0, hit.start() - 40):hit.end() + 40]!r}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_point_at_existing_files(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not a link
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{_rel(page)} links to missing files: {missing}"


def test_release_files_are_present():
    for name in ("LICENSE", "CITATION.cff", "CHANGELOG.md"):
        assert (ROOT / name).is_file() and (ROOT / name).stat().st_size > 0, name
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_citation_names_the_paper_as_preferred_citation():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "software" and cff["license"] == "MIT"
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper"
    assert paper["title"] == "Federated Unlearning via Class-Discriminative Pruning"
    assert [a["family-names"] for a in paper["authors"]] == ["Wang", "Guo", "Xie", "Qi"]
    assert str(paper["doi"]) == "10.1145/3485447.3512222" and paper["year"] == 2022


def test_readme_install_and_test_commands_are_those_of_ci():
    readme = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = 'pip install -e ".[dev,flower]"'
    assert install in readme and install in ci
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    assert "pytest\n" in blocks, "README.md needs a bash block that is exactly `pytest`"
    assert "pytest" in [line.strip() for line in ci.splitlines()], ".ci/run must run `pytest`"
    assert 'pytest -m "not slow"' in readme
