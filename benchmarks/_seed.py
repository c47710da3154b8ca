"""The seed's `BatchThreader`, loaded at run time from the bug report under shared/seed/."""

from __future__ import annotations

import os
import re
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

# shared/seed beside the checkout; STEADYPOOL_SEED_DIR points elsewhere (a GPU machine).
SEED_DIR = Path(
    os.environ.get("STEADYPOOL_SEED_DIR")
    or Path(__file__).resolve().parent.parent.parent / "shared" / "seed"
)


def load_seed_class() -> type | None:
    """Exec the seed's BatchThreader from the bug report text; None if it is not here."""
    for path in sorted(SEED_DIR.glob("*.txt")) if SEED_DIR.is_dir() else []:
        for block in re.findall(r"```[ ]*python\n(.*?)```", path.read_text(), flags=re.S):
            if "class BatchThreader" in block:
                namespace: dict[str, Any] = {"ThreadPool": ThreadPool}
                exec(compile(block, str(path), "exec"), namespace)
                seed_class: type = namespace["BatchThreader"]
                return seed_class
    return None
