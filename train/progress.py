"""A progress display for long loops: count, rate in images/s, and metrics."""

from __future__ import annotations

import sys
import time

import jax


class Bar:
    """tqdm when stderr is a terminal, else a line every ``every`` seconds.

    Only process 0 prints.
    """

    def __init__(self, total: int, desc: str, initial: int = 0, every: float = 30.0):
        self.total, self.desc, self.count, self.every = total, desc, initial, every
        self.images, self.start, self.last = 0, time.perf_counter(), 0.0
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
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        postfix = {k: f"{v:.4g}" for k, v in self.metrics.items()}
        postfix["img/s"] = f"{rate:.1f}"
        if self.tqdm is not None:
            self.tqdm.set_postfix(postfix, refresh=False)
            self.tqdm.update(n)
        elif time.perf_counter() - self.last >= self.every or self.count == self.total:
            self.last = time.perf_counter()
            items = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc}: {self.count}/{self.total} {items}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
