"""Bring each notebooks/NN_name.ipynb up to date with its source NN_name.py (used by `make lab`).

Only notebooks whose cells differ from their source are rewritten (with `jupytext --update`,
which keeps outputs and cell ids), so an up-to-date checkout is left untouched. Edits made in
JupyterLab reach the .py by themselves: jupytext's Lab extension saves both files of a pair.
"""

import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def cells(nb) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]


def main() -> None:
    for source in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        ipynb = source.with_suffix(".ipynb")
        if ipynb.exists() and cells(nbformat.read(ipynb, as_version=4)) == cells(jupytext.read(source)):
            continue
        print(f"updating {ipynb.name} from {source.name}")
        subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--update", str(source)],
                       check=True)


if __name__ == "__main__":
    main()
