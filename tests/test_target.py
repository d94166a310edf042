"""Per-platform choices follow the platform compiled for (cosjax.target),
not the host's default backend: a TPU or GPU program lowered on this CPU host
holds the scan neurons, XLA convolutions and no CPU compiler options, whether
the platform is chosen at lowering (a user's own jit) or by target.use."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cosjax
from cosjax import layers, target, xla_options
from tests.helpers import random_variables, tiny_resnet


def _primitives(fn, *args) -> list[str]:
    """Primitive names of ``fn``'s jaxpr equations, nested calls included."""
    return re.findall(r"= ([a-z_0-9]+)\[", str(jax.make_jaxpr(fn)(*args)))


def _snn(model):
    # A new function per call: JAX caches traces by function, and the
    # platform is decided at trace time.
    return lambda v, x: cosjax.run_snn(model, v, x, steps=4, presim=2, iterations=1)[0]


@pytest.mark.parametrize("platform", ["tpu", "gpu", "cuda"])
def test_accelerator_traces_take_the_scan_neurons_and_xla_convolutions(platform):
    model = tiny_resnet()
    variables = random_variables(model, (4, 4, 3))   # 4x4 and 2x2 maps: im2col on CPU
    x = jnp.zeros((2, 4, 4, 3))
    with target.use("cpu"):
        host = _primitives(_snn(model), variables, x)
    assert "scan" not in host                                           # fused neurons
    with target.use(platform):
        assert target.current() in ("tpu", "gpu")
        accel = _primitives(_snn(model), variables, x)
        assert xla_options.compiler_options() == {}
        assert layers.resolve_conv_impl("auto", 4) == "xla"
    assert "scan" in accel and "while" not in accel   # the fused forms loop in while
    assert "while" in host
    # The 2x2 maps' convolutions are im2col matmuls on CPU, XLA convolutions there.
    assert accel.count("conv_general_dilated") > host.count("conv_general_dilated")
    assert target.current() == "cpu"   # the context ended


def _lowered_ops(fn, args, platform: str) -> collections.Counter:
    """StableHLO operations of ``fn`` lowered for ``platform`` on this host,
    without the ``case``/``return`` that ``lax.platform_dependent`` leaves."""
    text = jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()
    ops = collections.Counter(re.findall(r"stablehlo\.([a-z_]+)", text))
    return ops - collections.Counter({"case": ops["case"], "return": ops["return"]})


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_a_users_jit_lowered_for_an_accelerator_holds_its_forms(platform):
    # No target.use: the user's own jit of simulate, lowered on this CPU host
    # for another platform, gets that platform's forms, decided at lowering.
    model = tiny_resnet()
    variables = random_variables(model, (4, 4, 3))   # 4x4 and 2x2 maps: im2col on CPU
    kernels = sum(a.ndim == 4 for a in jax.tree_util.tree_leaves(variables["params"]))
    x = jnp.zeros((2, 4, 4, 3))

    def user(v, x):
        return cosjax.simulate(model, v, x, time_steps=4, presim=2)

    lowered = {p: _lowered_ops(user, (variables, x), p) for p in ("cpu", platform)}
    with target.use(platform):
        fixed_accel = _lowered_ops(user, (variables, x), platform)
    with target.use("cpu"):
        fixed_cpu = _lowered_ops(user, (variables, x), "cpu")
    # Exactly the programs that target.use fixes at trace time ...
    assert lowered[platform] == fixed_accel and lowered["cpu"] == fixed_cpu
    # ... which differ: every convolution an XLA convolution, no im2col
    # concatenation, and the scan neurons' loops instead of the fused blocks.
    assert lowered[platform]["convolution"] == kernels > lowered["cpu"]["convolution"]
    assert lowered[platform]["concatenate"] == 0 < lowered["cpu"]["concatenate"]
    assert lowered[platform]["while"] != lowered["cpu"]["while"]


def test_the_host_keeps_its_cpu_choices():
    assert target.current() == "cpu" and target.forced() is None
    assert cosjax._fused.use_fused(target.current(), 8)
    assert layers.resolve_conv_impl("auto", 4) == layers.PER_PLATFORM   # decided at lowering
    assert layers.resolve_conv_impl("auto", 4, backend="cpu") == "matmul"
    with target.use("cpu"):
        assert layers.resolve_conv_impl("auto", 4) == "matmul"
    assert target.platform_of(jnp.zeros(2)) == "cpu"
    assert target.platform_of(np.zeros(2), jax.ShapeDtypeStruct((2,), jnp.float32)) is None


def test_simulate_under_a_target_gives_the_same_spikes():
    # The scan forms chosen for another platform give the same outputs here.
    model = tiny_resnet()
    variables = random_variables(model, (4, 4, 3))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 3))
    host = cosjax.simulate(model, variables, x, time_steps=4, presim=2)
    with target.use("tpu"):
        other = cosjax.run_snn(model, variables, x, steps=4, presim=2, iterations=1)[0]
    np.testing.assert_allclose(np.asarray(other), np.asarray(host), rtol=0, atol=1e-5)


def test_unknown_platforms_are_refused():
    with pytest.raises(ValueError, match="target platform must be one of"), target.use("ipu"):
        pass
