"""Execute a notebook and save every figure it draws as PNG, to look at them.

    python tools/render_figures.py notebooks/00_welcome.ipynb /tmp/figs   # fast mode unless COURSE_FAST=0
"""

import base64
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(notebook: str, out_dir: str) -> None:
    os.environ.setdefault("COURSE_FAST", "1")
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=3600, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(notebook).parent)}}).execute()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                n += 1
                (out / f"{Path(notebook).stem}_cell{i:02d}_{n}.png").write_bytes(base64.b64decode(png))
    nbformat.write(nb, out / Path(notebook).name)
    print(f"{n} figures and the executed notebook written to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
