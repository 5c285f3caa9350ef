"""Writing the run folder of ``bnlab bench``: every file atomically, through the lab's one writer."""
from __future__ import annotations

import io
from pathlib import Path

try:
    from ..runs.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
except ImportError:  # the writer's former home (same atomic contract)
    from ..runfiles import atomic_write as _atomic_write
    from ..runfiles import write_json as atomic_write_json
    from ..runfiles import write_text as atomic_write_text

    def atomic_write_bytes(path, data: bytes):
        return _atomic_write(path, lambda f: f.write(data), mode="wb")

__all__ = ["write_json", "write_text", "write_figure"]


write_json = atomic_write_json
write_text = atomic_write_text


def write_figure(path: Path, fig) -> Path:
    """Render a matplotlib ``Figure`` to PNG bytes, then write them atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return atomic_write_bytes(path, buf.getvalue())
