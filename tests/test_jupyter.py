"""JupyterLab as a user meets it: started in the repository root with the root's
jupyter_server_config.py it opens notebooks/; every notebook finds the repository root
(and so data/, results/, figures/) the same way under papermill and in JupyterLab; the
report notebook opens the committed reference by default and shows its figures."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config.loader import PyFileConfigLoader

from fedunlearn_lib.io import repo_root

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _server_config(cwd: Path, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    loader = PyFileConfigLoader("jupyter_server_config.py", path=str(ROOT))
    return loader.load_config()


def test_jupyter_started_in_the_root_opens_notebooks(monkeypatch, tmp_path):
    config = _server_config(ROOT, monkeypatch)
    assert config.FileContentsManager.preferred_dir == "notebooks"
    assert "root_dir" not in config.ServerApp  # the file browser reaches results/, figures/
    # the file changes nothing when a server starts elsewhere (e.g. installed env-wide)
    assert "preferred_dir" not in _server_config(tmp_path, monkeypatch).FileContentsManager


def test_repo_root_is_the_folder_with_the_snakefile(tmp_path):
    assert repo_root(ROOT / "notebooks") == ROOT == repo_root(ROOT)
    (tmp_path / "Snakefile").write_text("")
    (tmp_path / "notebooks").mkdir()
    assert repo_root(tmp_path / "notebooks") == tmp_path
    lone = tmp_path.parent / f"{tmp_path.name}-lone"
    lone.mkdir()
    assert repo_root(lone) == lone.resolve()  # no Snakefile above: where it started


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_changes_into_the_root_first(path):
    """The first code cell, before the parameters cell (and so before papermill's injected
    one), changes into repo_root(): the paths a notebook gets or defaults to (data,
    results/<profile>/..., figures/quick) mean the same under papermill (run in the root)
    and in JupyterLab or nbval (kernels start in notebooks/)."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    first = "".join(cells[0]["source"])
    assert "from fedunlearn_lib.io import repo_root" in first
    assert "os.chdir(repo_root())" in first
    assert "parameters" in cells[1].get("metadata", {}).get("tags", [])


def test_report_notebook_shows_the_committed_reference_by_default(tmp_path):
    """Run as JupyterLab would (in notebooks/, no parameters): notebook 09 shows
    figures/quick's Table 2 and every figure there."""
    out = tmp_path / "09.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", "--no-progress-bar",
                    "09_report.ipynb", str(out)], cwd=ROOT / "notebooks", check=True,
                   capture_output=True, text=True)
    outputs = [o for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"
               for o in c.get("outputs", [])]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "the committed reference in figures/quick/" in text
    markdown = "".join("".join(o["data"]["text/markdown"]) for o in outputs
                       if "text/markdown" in o.get("data", {}))
    assert "| dataset" in markdown  # Table 2
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(list((ROOT / "figures" / "quick").glob("*.png"))) > 0
