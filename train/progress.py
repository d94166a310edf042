"""A progress display for long loops: count, current rate in images/s, and metrics."""

from __future__ import annotations

import sys
import time

import jax


class Bar:
    """tqdm when stderr is a terminal, else a line every ``every`` seconds.

    img/s is the rate since the previous report (a pause or a slow phase
    shows at once, instead of diluting a since-start average). Only process
    0 prints.
    """

    def __init__(self, total: int, desc: str, initial: int = 0, every: float = 30.0):
        self.total, self.desc, self.count, self.every = total, desc, initial, every
        self.images, self.since = 0, time.perf_counter()   # since the last report
        self.last = 0.0
        self.metrics: dict[str, float] = {}
        self.enabled = jax.process_index() == 0
        self.tqdm = None
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.tqdm = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def update(self, n: int = 1, images: int = 0, **metrics: float) -> None:
        self.count += n
        self.images += images
        self.metrics.update(metrics)
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tqdm is None and now - self.last < self.every and self.count != self.total:
            return
        postfix = {k: f"{v:.4g}" for k, v in self.metrics.items()}
        postfix["img/s"] = f"{self.images / max(now - self.since, 1e-9):.1f}"
        self.images, self.since, self.last = 0, now, now
        if self.tqdm is not None:
            self.tqdm.set_postfix(postfix, refresh=False)
            self.tqdm.update(n)
        else:
            items = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc}: {self.count}/{self.total} {items}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
