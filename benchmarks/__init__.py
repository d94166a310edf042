"""Benchmark programs (run from a checkout; they print figures, they assert nothing).

- ``python -m benchmarks.speed``: ANN forward, SNN evaluation and training step
  of a zoo architecture, with a PyTorch yardstick.
- ``python -m benchmarks.conv_layer``: one 3x3 convolution, JAX against PyTorch.
- ``python -m benchmarks.static_compared``: static initial potentials against
  plain conversion and COS on a trained workdir.
"""
