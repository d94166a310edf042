"""A batch sharded over devices stays sharded through the SNN.

The time-batched ``[B*S, ...]`` layout is batch-major (row ``b*S + t``), so
GSPMD keeps each device on its own examples at every step: the compiled
programs hold no all-to-all, no collective-permute and no all-gather, and
``simulate``'s ``[T, B, ...]`` output is sharded along B. Several host
devices need ``XLA_FLAGS`` before JAX starts, so each case runs in a fresh
process.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks.hlo import collectives

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("method srp:2", "method group:3", "method parallel", "method signed")

SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import cosjax
from cosjax import analysis
from tests.helpers import random_variables, tiny_resnet
from train.evaluation.eval_steps import SnnSetting, make_snn_eval_step, make_static_eval_step, snn_eval_step

devices = jax.devices()
mesh = Mesh(np.array(devices), ("data",))
data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
model = tiny_resnet()
variables = random_variables(model, (8, 8, 3))
batch = 2 * len(devices)
x = jax.random.normal(jax.random.PRNGKey(1), (batch, 8, 8, 3))
labels = jnp.arange(batch) % 10
mask = jnp.ones((batch,), bool)
xs, vs = jax.device_put(x, data), jax.device_put(variables, replicated)
report = {"hlo": {}, "same": {}}

for unroll in (True, False):
    run = lambda v, x: cosjax.run_snn(model, v, x, steps=8, presim=4, iterations=1,
                                      unroll=unroll)
    f = jax.jit(run, in_shardings=(replicated, data))
    report["hlo"][f"run_snn unroll={unroll}"] = f.lower(vs, xs).compile().as_text()
    out, pots = f(vs, xs)
    ref_out, ref_pots = jax.jit(run)(variables, x)   # one device
    report["same"][f"run_snn unroll={unroll}"] = bool(
        np.allclose(out, ref_out, rtol=0, atol=1e-5)
        and all(np.allclose(pots[k], ref_pots[k], rtol=0, atol=1e-6) for k in ref_pots)
        and (np.argmax(out, -1) == np.argmax(ref_out, -1)).all())
    report["pots_sharded"] = all(tuple(p.sharding.spec)[:1] == ("data",) for p in pots.values())

out = cosjax.simulate(model, vs, xs, time_steps=6, presim=4)   # its own jit
report["simulate_spec"] = list(map(str, out.sharding.spec))
report["simulate_shape"] = list(out.shape)

step = make_snn_eval_step(model, SnnSetting(4, 2), 6, data, replicated)
args = (vs, xs, jax.device_put(labels, data), jax.device_put(mask, data))
report["hlo"]["pipeline snn step"] = step.lower(*args).compile().as_text()
correct, count = step(*args)
ref_correct, _ = jax.jit(snn_eval_step(model, SnnSetting(4, 2), 6))(variables, x, labels, mask)
report["same"]["pipeline snn step"] = bool((np.asarray(correct) == np.asarray(ref_correct)).all())

from train.evaluation.eval_steps import method_setting
for spec in ("srp:2", "group:3", "parallel", "signed"):   # the other conversion methods
    setting = method_setting(spec, 0)
    mstep = make_snn_eval_step(model, setting, 6, data, replicated)
    report["hlo"][f"method {spec}"] = mstep.lower(*args).compile().as_text()
    counts = np.asarray(mstep(*args)[0])
    one = np.asarray(jax.jit(snn_eval_step(model, setting, 6))(variables, x, labels, mask)[0])
    report["same"][f"method {spec}"] = bool((counts == one).all())

pots = {k: jnp.full(v.shape[1:], 0.25) for k, v in ref_pots.items()}
static = make_static_eval_step(model, 4, data, replicated)
sargs = (vs, jax.device_put(pots, replicated)) + args[1:]
report["hlo"]["static step"] = static.lower(*sargs).compile().as_text()

profile = analysis.network_profile(model, variables, x.shape[1:])
fans = {k: jnp.asarray(f, jnp.int32) for k, f in profile["fan_out"].items()}
stats_jit = analysis._batch_stats_jit()
report["hlo"]["analysis"] = stats_jit.lower(
    model, vs, xs, jax.device_put(mask, data), jax.device_put(labels, data), fans, None,
    time_steps=4, presim=4, iterations=1, window=4, method=cosjax.methods.IF,
    apply_kwargs=()).compile().as_text()
stats = [analysis.summarize(analysis.analyze_batch(model, v, a, time_steps=4, presim=4,
                                                   labels=labels, profile=profile))
         for v, a in ((vs, xs), (variables, x))]
report["same"]["analysis"] = json.dumps(stats[0], sort_keys=True, default=str) == json.dumps(
    stats[1], sort_keys=True, default=str)
for spec in ("srp:2", "group:3", "parallel", "signed"):   # the methods' spikes, events, operations
    setting = method_setting(spec, 0)
    stats = [analysis.summarize(analysis.analyze_batch(
        model, v, a, time_steps=4, presim=setting.presim, labels=labels, profile=profile,
        method=setting.method)) for v, a in ((vs, xs), (variables, x))]
    report["same"][f"analysis {spec}"] = json.dumps(stats[0], sort_keys=True, default=str) == (
        json.dumps(stats[1], sort_keys=True, default=str))
json.dump(report, sys.stdout)
"""


@pytest.fixture(scope="module", params=[2, 8])
def sharded_report(request):
    import json

    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={request.param}"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_sharded_programs_exchange_no_activations(sharded_report):
    assert set(sharded_report["hlo"]) == {"run_snn unroll=True", "run_snn unroll=False",
                                          "pipeline snn step", "static step", "analysis",
                                          *METHODS}
    for name, text in sharded_report["hlo"].items():
        found = collectives(text)
        moved = {k: found[k] for k in ("all-gather", "all-to-all", "collective-permute")}
        assert moved == {"all-gather": 0, "all-to-all": 0, "collective-permute": 0}, (name, found)


def test_sharded_results_equal_one_device(sharded_report):
    assert sharded_report["same"] == {"run_snn unroll=True": True, "run_snn unroll=False": True,
                                      "pipeline snn step": True, "analysis": True,
                                      **{name: True for name in METHODS},
                                      **{f"analysis {spec}": True
                                         for spec in ("srp:2", "group:3", "parallel", "signed")}}


def test_simulate_output_and_potentials_stay_sharded_along_the_batch(sharded_report):
    # [T, B, classes]: T unsharded, B over "data".
    assert sharded_report["simulate_spec"][:2] == ["None", "data"]
    assert sharded_report["pots_sharded"]


def test_collectives_are_counted():
    # The counter itself, on text shaped as XLA prints it.
    text = ("  %ag = f32[8,4]{1,0} all-gather(f32[1,4]{1,0} %p), dimensions={0}\n"
            "  %cp-start = (f32[2]{0}, f32[2]{0}) collective-permute-start(f32[2]{0} %x)\n"
            "  %cp-done = f32[2]{0} collective-permute-done(%cp-start)\n"
            "  %ar = s32[] all-reduce(s32[] %c), to_apply=%add\n")
    assert collectives(text) == {"all-gather": 1, "all-to-all": 0, "collective-permute": 1,
                                 "all-reduce": 1, "reduce-scatter": 0}
