"""A training progress bar on standard error: epoch, step, loss and images per second."""

from __future__ import annotations

import sys
import time


class TrainProgress:
    """One bar per phase (features, epochs); silent when disabled, so tests and --json stay clean."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None
        self._task = None
        self._images = 0
        self._start = time.perf_counter()
        self._loss: float | None = None

    def log(self, message: str) -> None:
        if self.enabled:
            print(f"imagespace train: {message}", file=sys.stderr, flush=True)

    def start(self, description: str, total: int | None) -> None:
        self.stop()
        self._images = 0
        self._loss = None
        self._start = time.perf_counter()
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self._task = self._bar.add_task(description, total=total, info="")
        self._bar.start()

    def advance(self, steps: int = 1, images: int = 0, loss: float | None = None) -> None:
        self._images += images
        if loss is not None:
            # An exponential average: a single batch's loss jumps too much to read.
            self._loss = loss if self._loss is None else 0.9 * self._loss + 0.1 * loss
        if self._bar is None:
            return
        rate = self._images / max(time.perf_counter() - self._start, 1e-9)
        info = f"{rate:,.0f} img/s" + (f"  loss {self._loss:.4f}" if self._loss is not None else "")
        self._bar.update(self._task, advance=steps, info=info)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
