"""Writing a text file so that readers see the old content or the new, never half of it."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename it over ``path``."""
    path = Path(path)
    temporary = path.with_name(path.name + ".part")
    temporary.write_text(text)
    os.replace(temporary, path)
