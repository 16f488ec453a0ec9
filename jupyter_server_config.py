# Jupyter Server settings of this repository: JupyterLab started in the repository root
# opens notebooks/ (its file browser can still go up to results/ and figures/; a notebook's
# kernel starts in notebooks/, and every notebook's first cell changes into the root with
# fedunlearn_lib.io.repo_root(), as papermill runs them from the workflow).
#
# Jupyter Server 2 reads no configuration from the working directory; it reads this file
# when it is named or on its config path:
#   jupyter lab --config=jupyter_server_config.py
#   JUPYTER_CONFIG_PATH=. jupyter lab
# or from the environment's etc/jupyter/ folder when installed there (a copy; it looks at
# the folder JupyterLab starts in, so elsewhere it changes nothing).
import os

c = get_config()  # noqa: F821 (defined by the config loader)

if os.path.isfile("Snakefile") and os.path.isdir("notebooks"):
    c.FileContentsManager.preferred_dir = "notebooks"  # relative to the root (the cwd)
