"""Reading compiled programs: the collective operations in an HLO module's text."""

from __future__ import annotations

import re

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")


def collectives(hlo_text: str) -> dict[str, int]:
    """``{kind: count}`` of the collective operations in a compiled HLO
    module's text (``compiled.as_text()``); an asynchronous
    ``-start``/``-done`` pair counts once."""
    return {kind: len(re.findall(rf"\s{kind}(?:-start)?\(", hlo_text)) for kind in COLLECTIVES}
