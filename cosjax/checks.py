"""Argument checks shared by the library and the pipeline."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["check_int", "is_int"]


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None,
              *, allow_none: bool = False, error: type[Exception] = ValueError) -> None:
    """Raises ``error`` unless ``value`` is an int in ``[low, high]``.

    Args:
      name: how the message names the value (e.g. ``"presim (rho)"``).
      low, high: inclusive bounds; None leaves that side open.
      allow_none: accept None as well.
      error: the exception type to raise (the pipeline passes its ConfigError).
    """
    if value is None and allow_none:
        return
    if (not is_int(value) or (low is not None and value < low)
            or (high is not None and value > high)):
        if low is not None and high is not None:
            want = f"an int in [{low}, {high}]"
        elif low is not None:
            want = f"an int >= {low}"
        elif high is not None:
            want = f"an int <= {high}"
        else:
            want = "an int"
        raise error(f"{name} must be {'None or ' if allow_none else ''}{want}, got {value!r}")
