"""Progress bars for long work: live on a terminal, a line every half minute in a log file."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, dynamic_ncols=True,
                mininterval=0.1 if interactive else 30.0)
