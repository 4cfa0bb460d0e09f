"""Progress over long loops (epochs, the shift suite, the cache build): a tqdm bar in a terminal or
JupyterLab, and under `make pipeline` plain lines instead (BRAIN_PROGRESS=lines), because papermill
relays a notebook's printed lines to the terminal but not the updates of its progress widgets."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator


def progress(
    iterable: Iterable, desc: str, total: int | None = None, disable: bool = False, every_s: float = 60.0, **tqdm_kwargs
):
    """The items of `iterable` with a tqdm bar (which has set_postfix), or, when BRAIN_PROGRESS=lines,
    with one printed line every `every_s` seconds and at the end."""
    if os.environ.get("BRAIN_PROGRESS") != "lines":
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, disable=disable, **tqdm_kwargs)
    return _lines(iterable, desc, total, disable, every_s)


def _lines(iterable: Iterable, desc: str, total: int | None, disable: bool, every_s: float) -> Iterator:
    total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    start = last = time.perf_counter()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if not disable and (now - last >= every_s or done == total):
            last = now
            of = f"/{total}" if total else ""
            print(f"{desc}: {done}{of} in {now - start:.0f} s", file=sys.stdout, flush=True)
