"""How ``demo.icechunk`` was made: the demo recipe's first 2 of 4 days, built by this project on its
Icechunk 1 stack (icechunk 1.1, Python 3.11, at commit 3041f3d). Kept as it was written, so that the suite
shows a repository of the Icechunk 1 line taking appends on the current stack:

    python tests/data/icechunk1/make.py   # in a checkout of 3041f3d with its own environment
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from forge.engine.stages import run_spec_for
from forge.recipe.loading import load_recipe
from forge.replicas.server import SourceServer
from forge.run import run_locally
from forge.testing import make_dataset, write_inputs

HERE = Path(__file__).parent
SOURCE = "https://data.example.org/archive/"

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        write_inputs(make_dataset(4), Path(scratch) / "src", 1)
        with SourceServer(root=Path(scratch) / "src") as source:
            recipe = str(HERE / "demo")
            run = run_spec_for(recipe, scratch, f"{scratch}/cache", 2, {SOURCE: source.url + "/"})
            built = run_locally(load_recipe(recipe), run)["url"]
        shutil.rmtree(HERE / "demo.icechunk", ignore_errors=True)
        shutil.copytree(built, HERE / "demo.icechunk")
