"""Ahead-of-time compilation for a TPU topology on this CPU host.

libtpu compiles for TPU devices described by
``jax.experimental.topologies.get_topology_desc`` without a TPU attached.
A tiny model's pipeline train step and SNN evaluation step are compiled for
``v5e:2x2`` (4 chips, the batch sharded over them) under
``cosjax.target.use("tpu")``: they must compile, hold the lax.scan neurons
and XLA convolutions (not the CPU-only fused neurons and im2col matmuls),
carry no CPU compiler options and exchange no activations between chips.

Needs libtpu (``pip install "jax[tpu]"``; ``.ci/run`` installs it in a
virtual environment of its own and runs this file there with
``JAX_PLATFORMS=cpu``); skipped with that reason where it is missing.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.hlo import collectives
from cosjax import target, xla_options
from tests.helpers import random_variables, tiny_resnet

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu not installed (pip install 'jax[tpu]')")


@pytest.fixture(scope="module")
def tpu_mesh():
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
    assert len(devices) == 4 and devices[0].platform == "tpu"
    return Mesh(np.array(devices), ("data",))


def _abstract(tree, sharding):
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a), sharding=sharding), tree)


def _no_exchange(hlo_text: str) -> dict[str, int]:
    found = collectives(hlo_text)
    return {k: found[k] for k in ("all-gather", "all-to-all", "collective-permute")}


def test_snn_eval_step_compiles_for_tpu_with_the_accelerator_forms(tpu_mesh):
    from train.evaluation.eval_steps import SnnSetting, make_snn_eval_step

    data, replicated = NamedSharding(tpu_mesh, P("data")), NamedSharding(tpu_mesh, P())
    model = tiny_resnet()
    variables = random_variables(model, (4, 4, 3))   # 2x2 maps: im2col on a CPU target
    kernels = sum(a.ndim == 4 for a in jax.tree_util.tree_leaves(variables["params"]))
    args = (_abstract(variables, replicated),
            jax.ShapeDtypeStruct((8, 4, 4, 3), jnp.float32, sharding=data),
            jax.ShapeDtypeStruct((8,), jnp.int32, sharding=data),
            jax.ShapeDtypeStruct((8,), jnp.bool_, sharding=data))
    with target.use("tpu"):
        assert xla_options.compiler_options() == {}
        step = make_snn_eval_step(model, SnnSetting(4, 1), 4, data, replicated)
        traced = step.trace(*args)
        compiled = traced.lower(lowering_platforms=("tpu",)).compile()
    jaxpr = str(traced.jaxpr)
    # The scan neurons; the fused CPU forms run their blocks in while loops.
    assert " scan[" in jaxpr and " while[" not in jaxpr
    assert jaxpr.count("conv_general_dilated[") == kernels     # every conv an XLA conv
    assert _no_exchange(compiled.as_text()) == {"all-gather": 0, "all-to-all": 0,
                                                "collective-permute": 0}
    assert compiled.memory_analysis().argument_size_in_bytes > 0


def test_train_step_compiles_for_tpu(tpu_mesh):
    from tests.configs import tiny
    from train.training_loop import create_state, make_train_step

    data, replicated = NamedSharding(tpu_mesh, P("data")), NamedSharding(tpu_mesh, P())
    model = tiny_resnet()
    state = create_state(model, tiny.get_config(), (4, 4, 3), 10, None)   # on the host
    with target.use("tpu"):
        step = make_train_step(model, data, replicated)
        compiled = step.trace(_abstract(state, replicated),
                              jax.ShapeDtypeStruct((8, 4, 4, 3), jnp.float32, sharding=data),
                              jax.ShapeDtypeStruct((8,), jnp.int32, sharding=data),
                              jax.ShapeDtypeStruct((8,), jnp.int32, sharding=data)).lower(
            lowering_platforms=("tpu",)).compile()
    # Gradients and batch statistics are summed over chips; activations stay put.
    assert _no_exchange(compiled.as_text()) == {"all-gather": 0, "all-to-all": 0,
                                                "collective-permute": 0}
    assert collectives(compiled.as_text())["all-reduce"] >= 1


def test_the_aot_plan_of_a_config_compiles_and_fits(tmp_path, capsys):
    import json

    from benchmarks import aot

    out = tmp_path / "plan.json"
    assert aot.main(["--config=tests/configs/tiny.py", "--target=tpu:v5e:2x2",
                     f"--json={out}"]) == 0
    plan = json.loads(out.read_text())
    assert plan["chips"] == 4 and plan["chip"]["hbm_gib"] == 16
    names = [row["program"] for row in plan["programs"]]
    assert names[:2] == ["train step", "ANN eval"] and any(n.startswith("SNN cos") for n in names)
    for row in plan["programs"]:
        assert row["compiled"] and row["fits"] and row["gflops"] > 0, row
        assert row["collectives"]["all-gather"] == row["collectives"]["all-to-all"] == 0, row
    assert "ESTIMATES" in capsys.readouterr().out


def test_the_aot_plan_refuses_a_bad_target_in_one_line(capsys):
    """A bad --target is a bad argument: one line ``error: ...``, exit status 2."""
    from benchmarks import aot

    assert aot.main(["--config=tests/configs/tiny.py", "--target=gpu:k80"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --target must be ") and len(err.strip().splitlines()) == 1
