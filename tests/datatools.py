"""Dataset helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

import json
import shutil
from pathlib import Path


def copy_category(dataset_dir: Path, root: Path, category: str) -> Path:
    """Copy one category of a dataset to `root` with a manifest listing only it; return root."""
    shutil.copytree(dataset_dir / category, root / category)
    data = json.loads((dataset_dir / "manifest.json").read_text())
    data["categories"] = {category: data["categories"][category]}
    (root / "manifest.json").write_text(json.dumps(data))
    return root
