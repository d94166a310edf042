"""Ahead-of-time compilation for NVIDIA H100s on this CPU host (no GPU).

With the CUDA plugin (``pip install "jax[cuda12]"``) and ``JAX_PLATFORMS=cpu``,
XLA compiles real H100 code for the project's own description of the GPU
(:mod:`benchmarks.gpu_targets`). A tiny model's pipeline train step and SNN
evaluation step, and a user's own jit of ``cosjax.simulate``, are compiled
for one H100 and for one host of 8: they must hold the scan neurons and
cuDNN convolutions (no im2col matmuls, no fused CPU neurons) and exchange no
activations between GPUs (no all-gather, all-to-all or collective-permute).

Skipped where the plugin is missing; ``.ci/run`` installs it in a virtual
environment of its own and runs this file there with ``JAX_PLATFORMS=cpu``.
"""

import collections
import importlib.util
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import cosjax
from benchmarks import gpu_targets
from benchmarks.hlo import collectives, custom_calls
from cosjax import target
from tests.helpers import random_variables, tiny_resnet

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax_cuda12_plugin") is None,
                                reason="CUDA plugin not installed (pip install 'jax[cuda12]')")

NO_EXCHANGE = {"all-gather": 0, "all-to-all": 0, "collective-permute": 0}


def test_every_gpu_description_parses():
    from jax.experimental import topologies

    for name, gpu in gpu_targets.GPUS.items():
        devices = topologies.get_topology_desc(
            topology_name=name, platform="cuda", target_config=gpu_targets.target_config(gpu),
            topology="1x1x2").devices
        assert len(devices) == 2 and devices[0].device_kind == gpu.device_kind, name


@pytest.fixture(scope="module", params=[1, 8], ids=["h100", "h100x8"])
def h100_mesh(request):
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(
        topology_name="h100", platform="cuda",
        target_config=gpu_targets.target_config(gpu_targets.GPUS["h100"]),
        topology=f"1x1x{request.param}").devices
    assert len(devices) == request.param
    return Mesh(np.array(devices), ("data",))


def _abstract(tree, sharding):
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a), sharding=sharding), tree)


def _kernels(census, prefix):
    return sum(n for name, n in census.items() if name.startswith(prefix))


def _forms(lowered_text: str) -> collections.Counter:
    return collections.Counter(re.findall(r"stablehlo\.(convolution|concatenate|while)",
                                          lowered_text))


def _model():
    model = tiny_resnet()
    variables = random_variables(model, (4, 4, 3))   # 4x4 and 2x2 maps: im2col on a CPU
    leaves = jax.tree_util.tree_leaves(variables["params"])
    return model, variables, sum(a.ndim == 4 for a in leaves), sum(a.ndim == 2 for a in leaves)


def test_snn_eval_step_compiles_for_h100_with_the_accelerator_forms(h100_mesh):
    from train.evaluation.eval_steps import SnnSetting, make_snn_eval_step

    data, replicated = NamedSharding(h100_mesh, P("data")), NamedSharding(h100_mesh, P())
    model, variables, convs, dense = _model()
    args = (_abstract(variables, replicated),
            jax.ShapeDtypeStruct((8, 4, 4, 3), jnp.float32, sharding=data),
            jax.ShapeDtypeStruct((8,), jnp.int32, sharding=data),
            jax.ShapeDtypeStruct((8,), jnp.bool_, sharding=data))
    with target.use("gpu"):   # cosjax's jit made without the CPU compiler options
        step = make_snn_eval_step(model, SnnSetting(4, 1), 4, data, replicated)
    lowered = step.trace(*args).lower(lowering_platforms=("cuda",))   # the forms: chosen here
    forms = _forms(lowered.as_text())
    assert forms["convolution"] == convs and forms["concatenate"] == 0, forms
    compiled = lowered.compile()
    text = compiled.as_text()
    census = custom_calls(text)
    # Every convolution a cuDNN one (each layer runs once on the time-batched
    # [B*S, ...] input), the dense head a GEMM: no im2col matmuls.
    assert _kernels(census, "__cudnn$conv") == convs, census
    assert _kernels(census, "__triton") + _kernels(census, "__cublas") == dense, census
    found = collectives(text)
    assert {k: found[k] for k in NO_EXCHANGE} == NO_EXCHANGE
    assert found["all-reduce"] == (1 if len(h100_mesh.devices.flat) > 1 else 0)


def test_train_step_compiles_for_h100(h100_mesh):
    from tests.configs import tiny
    from train.training_loop import create_state, make_train_step

    data, replicated = NamedSharding(h100_mesh, P("data")), NamedSharding(h100_mesh, P())
    model, _, convs, _ = _model()
    state = create_state(model, tiny.get_config(), (4, 4, 3), 10, None)   # on the host
    with target.use("gpu"):
        step = make_train_step(model, data, replicated)
    compiled = step.trace(_abstract(state, replicated),
                          jax.ShapeDtypeStruct((8, 4, 4, 3), jnp.float32, sharding=data),
                          jax.ShapeDtypeStruct((8,), jnp.int32, sharding=data),
                          jax.ShapeDtypeStruct((8,), jnp.int32, sharding=data)).lower(
        lowering_platforms=("cuda",)).compile()
    text = compiled.as_text()
    census = custom_calls(text)
    # Every convolution, its kernel gradient and (but the first layer's) its
    # input gradient a cuDNN call: none is an im2col matmul. (XLA writes some
    # gradients as forward convolutions: the total is what holds.)
    assert _kernels(census, "__cudnn$conv") == 3 * convs - 1, census
    found = collectives(text)
    # Gradients and batch statistics are summed over GPUs; activations stay put.
    assert {k: found[k] for k in NO_EXCHANGE} == NO_EXCHANGE
    assert (found["all-reduce"] >= 1) == (len(h100_mesh.devices.flat) > 1)


def test_a_users_jit_of_simulate_compiles_for_h100_without_target_use(h100_mesh):
    data, replicated = NamedSharding(h100_mesh, P("data")), NamedSharding(h100_mesh, P())
    model, variables, convs, _ = _model()

    def user(v, x):
        return cosjax.simulate(model, v, x, time_steps=4, presim=4).sum(0)

    lowered = jax.jit(user).trace(
        _abstract(variables, replicated),
        jax.ShapeDtypeStruct((8, 4, 4, 3), jnp.float32, sharding=data)).lower(
        lowering_platforms=("cuda",))
    assert target.forced() is None
    forms = _forms(lowered.as_text())
    assert forms["convolution"] == convs and forms["concatenate"] == 0, forms
    text = lowered.compile().as_text()
    assert _kernels(custom_calls(text), "__cudnn$conv") == convs
    found = collectives(text)
    assert {k: found[k] for k in NO_EXCHANGE} == NO_EXCHANGE


def test_the_aot_plan_of_a_config_for_h100s(tmp_path, capsys):
    import json

    from benchmarks import aot

    out = tmp_path / "plan.json"
    assert aot.main(["--config=tests/configs/tiny.py", "--target=gpu:h100:8",
                     f"--json={out}"]) == 0
    plan = json.loads(out.read_text())
    assert plan["chips"] == 8 and plan["platform"] == "cuda" and plan["gpu"]["hbm_gb"] == 80
    for row in plan["programs"]:
        assert row["compiled"] and row["fits"] and row["gflops"] > 0, row
        assert _kernels(row["kernels"], "__cudnn$conv") > 0, row
        assert row["collectives"]["all-gather"] == row["collectives"]["all-to-all"] == 0, row
    train = plan["programs"][0]
    assert train["program"] == "train step" and train["collectives"]["all-reduce"] >= 1
    printed = capsys.readouterr().out
    assert "ESTIMATES" in printed and "PRE-OPTIMISATION" in printed
