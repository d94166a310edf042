"""Reading compiled programs: the collective operations and library kernels in an
HLO module's text."""

from __future__ import annotations

import re

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")


def collectives(hlo_text: str) -> dict[str, int]:
    """``{kind: count}`` of the collective operations in a compiled HLO
    module's text (``compiled.as_text()``); an asynchronous
    ``-start``/``-done`` pair counts once."""
    return {kind: len(re.findall(rf"\s{kind}(?:-start)?\(", hlo_text)) for kind in COLLECTIVES}


def custom_calls(hlo_text: str) -> dict[str, int]:
    """``{kind: count}`` of the library kernels in a compiled GPU HLO module's
    text: cuDNN convolutions (``__cudnn$conv*`` custom calls, by target),
    cuBLAS GEMMs (``__cublas$*``), Triton GEMM fusions (fusions whose backend
    config kind names a Triton GEMM) and any other custom call, by target."""
    found: dict[str, int] = {}
    for name in re.findall(r'custom_call_target="([^"]+)"', hlo_text):
        found[name] = found.get(name, 0) + 1
    for kind in re.findall(r'"kind":"(__triton[a-z_]*gemm[a-z_]*)"', hlo_text):
        found[kind] = found.get(kind, 0) + 1
    return dict(sorted(found.items()))
