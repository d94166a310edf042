"""PyTorch checkpoint interop: import/export of official-layout state dicts,
ANN parity, and spike-exact SNN parity with a PyTorch reference of the COS
calibration (tests/torch_reference.py)."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cosjax import QCFS, create_model, qcfs  # noqa: E402
from cosjax import static_calibration as sc  # noqa: E402
from cosjax.simulate import run_snn  # noqa: E402
from cosjax.torch_interop import (  # noqa: E402
    default_image_size,
    from_torch_state_dict,
    load_torch_checkpoint,
    potentials_from_torch_state_dict,
    to_torch_state_dict,
)
from tests import torch_reference as ref  # noqa: E402

# Parity with the float64 PyTorch reference needs float64 in JAX too.
pytestmark = pytest.mark.usefixtures("x64")

LEVELS = 4
ARCHS = ["vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet20", "resnet34"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """PyTorch's intra-op threads spin and crawl on a shared 2-core machine
    (a 32x32 ResNet-20 forward: 1.8 s with 2 threads, 0.06 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nhwc(t: "torch.Tensor") -> np.ndarray:
    """NCHW torch tensor -> NHWC NumPy (other ranks unchanged)."""
    a = t.detach().numpy()
    return np.moveaxis(a, 1, -1) if a.ndim == 4 else a


def nhwc_time(t: "torch.Tensor") -> np.ndarray:
    """``[S, B, C, H, W]`` -> ``[S, B, H, W, C]`` (other ranks unchanged)."""
    a = t.detach().numpy()
    return np.moveaxis(a, 2, -1) if a.ndim == 5 else a


def vgg_image_size(arch, num_classes, size):
    """The ``image_size`` argument for inputs of side ``size``: None where
    the official rule (224 for 1000 classes, else 32) gives it."""
    official = default_image_size(arch, num_classes)
    return size if arch.startswith("vgg") and size != official else None


def reference_model(arch, num_classes, size, dtype, seed=1, batch=2):
    """A randomised official-layout model, calibrated on its test images
    ``[batch, 3, size, size]``."""
    images = torch.randn(batch, 3, size, size, dtype=dtype,
                         generator=torch.Generator().manual_seed(seed))
    model = ref.make_model(arch, num_classes, LEVELS, dtype=dtype,
                           image_size=vgg_image_size(arch, num_classes, size))
    return ref.randomize_(model, images, seed=seed), images


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------
# ANN parity.

# (arch, num_classes, image side): every architecture with the CIFAR head
# at 32x32; ImageNet heads (1000 classes) for one network of each family,
# as the head's conversion does not depend on the trunk: resnet18 at 32x32
# (ResNets take any input size), and vgg16 at 64x64 (`image_size=64`: a
# 2x2x512 feature map, the same C,H,W -> H,W,C reordering of the first dense
# layer as the official 7x7x512 one, at 1/12 of its size). The official
# 224x224 VGG head is checked once, in test_vgg_imagenet_head_224.
ANN_CASES = [(a, 10, 32) for a in ARCHS] + [("resnet18", 1000, 32), ("vgg11", 1000, 64)]
# Export / re-import is checked on one network of each family and head
# (the conversion of a layer does not depend on where it sits).
ROUNDTRIP_CASES = {("vgg11", 10), ("resnet20", 10), ("resnet18", 1000), ("vgg11", 1000)}


def _torch_qcfs_io(model, images):
    """Logits and ``[(input, output)]`` of every QCFS in call order."""
    records = []
    hooks = [m.register_forward_hook(lambda m, a, o: records.append((a[0], o)))
             for m in model.modules() if isinstance(m, ref.QCFS)]
    with torch.no_grad():
        logits = model(images)
    for h in hooks:
        h.remove()
    return logits, records


def _forced_apply(model, variables, images, forced):
    """cosjax forward in which QCFS layer k outputs ``forced[k]`` (NHWC);
    returns the logits and every QCFS layer's input."""
    inputs = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, QCFS) and context.method_name == "__call__":
            inputs.append(args[0])
            return forced[len(inputs) - 1]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, images)
    return logits, inputs


@pytest.mark.parametrize("arch,num_classes,size", ANN_CASES)
def test_ann_logits_match_torch_and_roundtrip(arch, num_classes, size):
    image_size = vgg_image_size(arch, num_classes, size)
    model = create_model(arch, num_classes, LEVELS)

    # float64: end to end, 1e-9.
    tmodel, images = reference_model(arch, num_classes, size, torch.float64)
    with torch.no_grad():
        expected = tmodel(images).numpy()
    variables = from_torch_state_dict(tmodel.state_dict(), arch, num_classes,
                                      image_size=image_size)
    assert all(x.dtype == jnp.float64 for x in jax.tree_util.tree_leaves(variables))
    logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(nhwc(images))))
    assert np.abs(expected).max() > 0.1  # a non-degenerate network
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-9)
    if (arch, num_classes) in ROUNDTRIP_CASES:
        # Export then re-import is the identity; the export loads strictly.
        tmodel.load_state_dict(assert_roundtrip(variables, tmodel.state_dict(), arch,
                                                num_classes, image_size), strict=True)

    # float32: the QCFS floor is discontinuous, so a float32 rounding
    # difference (~1e-6 relative: XLA and PyTorch sum in different orders)
    # at a pre-activation lying on a level boundary flips one level, and the
    # flip propagates (measured, vgg11 at 224x224: one flipped level among
    # 7.4M activations moved the logits by 0.39). Whether that happens
    # depends on the platform's summation order, so compare layer by layer:
    # every QCFS layer of cosjax is fed torch's QCFS outputs; its
    # pre-activations must match torch's to 2e-5 of the layer's largest, the
    # activation itself must match bit for bit on torch's inputs, and the
    # logits must match to 1e-5.
    tmodel, images = tmodel.float(), images.float()
    expected32, records = _torch_qcfs_io(tmodel, images)
    variables32 = from_torch_state_dict(tmodel.state_dict(), arch, num_classes,
                                        image_size=image_size)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables32))
    forced = [jnp.asarray(nhwc(out)) for _, out in records]
    logits32, inputs = jax.jit(_forced_apply, static_argnums=0)(
        model, variables32, jnp.asarray(nhwc(images)), forced)
    assert len(inputs) == len(records)
    lams = [float(m.up.detach()) for m in tmodel.modules() if isinstance(m, ref.QCFS)]
    for (z_torch, out_torch), z, lam in zip(records, inputs, lams):
        z_torch = nhwc(z_torch)
        assert z.dtype == jnp.float32
        scale = np.abs(z_torch).max()
        np.testing.assert_allclose(np.asarray(z), z_torch, rtol=0, atol=2e-5 * scale)
        np.testing.assert_array_equal(
            np.asarray(qcfs(jnp.asarray(z_torch), jnp.float32(lam), LEVELS)), nhwc(out_torch))
    np.testing.assert_allclose(np.asarray(logits32), expected32.numpy(), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_vgg_imagenet_head_224():
    # The official ImageNet head: 1000 classes, 512*7*7 -> 4096, 224x224 input.
    arch = "vgg11"
    tmodel, images = reference_model(arch, 1000, 224, torch.float64, batch=1)
    assert tmodel.classifier[1].weight.shape == (4096, 512 * 7 * 7)
    with torch.no_grad():
        expected = tmodel(images).numpy()
    state = tmodel.state_dict()
    variables = from_torch_state_dict(state, arch, 1000)
    assert variables["params"]["fc1"]["kernel"].shape == (7 * 7 * 512, 4096)
    model = create_model(arch, 1000, LEVELS)
    logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(nhwc(images))))
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------
# Export / re-import.

def assert_roundtrip(variables, state, arch, num_classes, image_size=None):
    """Export equals the original state dict (``num_batches_tracked``: 0),
    loads strictly, and re-imports to identical variables."""
    exported = to_torch_state_dict(variables, arch, num_classes, image_size=image_size)
    assert list(exported) == list(state)  # PyTorch's key order, too
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            assert exported[key].dtype == torch.int64 and exported[key].shape == ()
            assert int(exported[key]) == 0
        else:
            assert exported[key].dtype == value.dtype and exported[key].shape == value.shape
            assert np.array_equal(exported[key].numpy(), value.numpy()), key
    assert_trees_equal(from_torch_state_dict(exported, arch, num_classes, image_size=image_size),
                       variables)
    return exported


def test_export_of_cosjax_tree_loads_strictly():
    # A variables tree made on the cosjax side (the structure, shapes and
    # dtypes of `model.init`, random values; not an import) exports to a
    # state dict that the official-layout model loads strictly. (`model.init`
    # itself is not called: its RNG-heavy compilation takes ~25 s here.)
    model = create_model("resnet20", 100, LEVELS)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)), shapes)
    tmodel = ref.make_model("resnet20", 100, LEVELS)
    tmodel.load_state_dict(to_torch_state_dict(variables, "resnet20", 100), strict=True)
    assert_roundtrip(variables, tmodel.state_dict(), "resnet20", 100)


# ---------------------------------------------------------------------------
# Spike-exact SNN parity with the PyTorch reference (float64).

@pytest.fixture(scope="module")
def snn_networks():
    """``arch -> (torch model, images [2, 3, 32, 32], cosjax variables)``, float64."""
    networks = {}
    with jax.enable_x64(True):   # module scope: set up before the per-test x64 fixture
        for arch in ("vgg16", "resnet20"):
            tmodel, images = reference_model(arch, 10, 32, torch.float64, seed=2)
            networks[arch] = (tmodel, images,
                              from_torch_state_dict(tmodel.state_dict(), arch, 10))
    return networks


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
@pytest.mark.parametrize("T,rho", [(8, 0), (8, 4), (4, 8)])
def test_snn_spikes_match_torch_reference(snn_networks, arch, T, rho):
    tmodel, images, variables = snn_networks[arch]
    expected, layers = ref.snn_forward(tmodel, images, T, rho)
    model = create_model(arch, 10, LEVELS)
    steps = max(T, rho)

    def run(variables, images):
        names, spikes = [], []

        def record(name, x, lam, s):
            names.append(name)
            spikes.append(s)
        out, potentials = run_snn(model, variables, images, steps=steps, presim=rho,
                                  iterations=1, on_layer=record)
        return out[:T], spikes, [potentials[n] for n in names]

    out, spikes, potentials = jax.jit(run)(variables, jnp.asarray(nhwc(images)))
    assert len(spikes) == len(layers) == (15 if arch == "vgg16" else 19)
    shifted = np.zeros(3, int)
    for (name, t_spikes, t_v0), s, v0 in zip(layers, spikes, potentials):
        t_spikes, t_v0 = nhwc_time(t_spikes), nhwc(t_v0)
        # Every spike of every neuron at every step, hence every count.
        np.testing.assert_array_equal(np.asarray(s), t_spikes, err_msg=name)
        np.testing.assert_array_equal(np.asarray(s).sum(0), t_spikes.sum(0), err_msg=name)
        # Calibration: the same neurons shifted the same way; distances to
        # rounding (they are computed from summed currents).
        v0 = np.asarray(v0)
        np.testing.assert_array_equal(np.sign(v0 - 0.5), np.sign(t_v0 - 0.5), err_msg=name)
        np.testing.assert_allclose(v0, t_v0, rtol=0, atol=1e-12, err_msg=name)
        shifted += np.array([(t_v0 < 0.5).sum(), (t_v0 > 0.5).sum(), (abs(t_v0 - 0.5) > 1).sum()])
    # Every branch of the shift rule is exercised: down, up, and distances
    # beyond 1 (from m_fire / m_quiet).
    assert (shifted > 0).all() if rho > 0 else (shifted == 0).all()
    assert 0.05 < np.mean([float(s.mean()) for _, s, _ in layers]) < 0.6  # real spiking
    # Per-step outputs: not bitwise (XLA and PyTorch sum convolutions and
    # matmuls in different orders), equal to float64 rounding.
    assert out.shape == expected.shape == (T, 2, 10)
    np.testing.assert_allclose(np.asarray(out), expected.numpy(), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# Static initial potentials exported with the model (float64).

GRANULARITIES = ("neuron", "channel", "layer")


def split_potentials(state):
    """An exported state dict -> (the official model's tensors, ``{module: v0}``)."""
    rest = {k: v for k, v in state.items() if not k.endswith(".v0")}
    return rest, {k[:-len(".v0")]: v for k, v in state.items() if k.endswith(".v0")}


@pytest.fixture(scope="module")
def static_resnet20():
    """A ResNet-20 on 8x8 inputs (feature maps 8x8, 4x4, 2x2), its cosjax
    variables and static potentials of every granularity (layer i gets
    ``GRANULARITIES[i % 3]``), values on calibrate_static's default grid."""
    with jax.enable_x64(True):
        tmodel, images = reference_model("resnet20", 10, 8, torch.float64, seed=3, batch=3)
        variables = from_torch_state_dict(tmodel.state_dict(), "resnet20", 10)
        model = create_model("resnet20", 10, LEVELS)
        shapes = sc.neuron_shapes(model, variables, (8, 8, 3))
        rng = np.random.default_rng(4)
        potentials = {name: np.asarray(rng.choice(sc.default_grid(), size=sc.granular_shape(
            shape, GRANULARITIES[i % 3])), np.float64) for i, (name, shape) in
            enumerate(shapes.items())}
    return tmodel, images, model, variables, shapes, potentials


def test_static_potentials_export_roundtrip_and_spike_parity(static_resnet20):
    tmodel, images, model, variables, shapes, potentials = static_resnet20
    exported = to_torch_state_dict(variables, "resnet20", 10, initial_potentials=potentials)
    rest, v0s = split_potentials(exported)
    assert len(v0s) == len(shapes) == 19
    # Layout: per neuron [C, H, W], per channel [C, 1, 1], per layer [];
    # each right after its module's threshold `up`.
    keys = list(exported)
    for (name, shape), (module, v0) in zip(shapes.items(), v0s.items()):
        h, w, c = shape
        assert v0.dtype == torch.float64
        assert tuple(v0.shape) == {3: (c, h, w), 1: (c, 1, 1), 0: ()}[potentials[name].ndim]
        assert keys[keys.index(f"{module}.up") + 1] == f"{module}.v0"
    np.testing.assert_array_equal(v0s["conv1.2"].numpy(),
                                  np.moveaxis(potentials["stem_act"], -1, 0))
    # The rest loads strictly into the official layout; both directions are exact.
    snn = ref.make_model("resnet20", 10, LEVELS, dtype=torch.float64)
    snn.load_state_dict(rest, strict=True)
    assert_trees_equal(from_torch_state_dict(exported, "resnet20", 10), variables)
    back = potentials_from_torch_state_dict(exported, "resnet20", 10)
    assert list(back) == list(potentials)
    for name, v0 in potentials.items():
        assert back[name].dtype == v0.dtype and back[name].shape == v0.shape, name
        np.testing.assert_array_equal(back[name], v0, err_msg=name)

    # The PyTorch reference SNN started from the exported v0 emits the same
    # spikes as cosjax's static simulation, at every step in every layer.
    T = 6
    expected, layers = ref.snn_forward(snn, images, T, 0, initial_potentials=v0s)
    plain, plain_layers = ref.snn_forward(snn, images, T, 0)
    x = jnp.asarray(nhwc(images))
    outputs = sc.simulate_static(model, variables, x, back, time_steps=T)

    names = []

    def run(variables, images, given):
        spikes = []

        def record(name, x, lam, s):
            names.append(name)
            spikes.append(s)
        _, start = run_snn(model, variables, images, steps=T, presim=0, iterations=1,
                           initial_potentials=given, on_layer=record)
        return spikes, start

    spikes, start = jax.jit(run)(variables, x, sc.batch_potentials(back, shapes, 3))
    assert names == list(shapes)
    differ = 0
    for name, s, (_, t_spikes, t_v0), (_, p_spikes, _) in zip(names, spikes, layers,
                                                               plain_layers):
        t_spikes = nhwc_time(t_spikes)
        np.testing.assert_array_equal(nhwc(t_v0), np.asarray(start[name]), err_msg=name)
        np.testing.assert_array_equal(np.asarray(s), t_spikes, err_msg=name)
        np.testing.assert_array_equal(np.asarray(s).sum(0), t_spikes.sum(0), err_msg=name)
        differ += int((t_spikes != nhwc_time(p_spikes)).sum())
    assert differ > 100                      # the potentials change the spikes
    assert 0.05 < np.mean([float(s.mean()) for _, s, _ in layers]) < 0.6  # real spiking
    # Per-step outputs: different programs and summation orders, float64 rounding.
    assert outputs.shape == expected.shape == (T, 3, 10)
    np.testing.assert_allclose(np.asarray(outputs), expected.numpy(), rtol=0, atol=1e-12)
    assert np.abs(expected.numpy() - plain.numpy()).max() > 0.1


def test_static_potentials_layer_errors(static_resnet20):
    _, _, _, variables, shapes, potentials = static_resnet20
    missing = {k: v for k, v in potentials.items() if k != "stage2_block1/act1"}
    with pytest.raises(ValueError, match=r"initial_potentials must name every spiking layer "
                                         r"once: missing stage2_block1/act1$"):
        to_torch_state_dict(variables, "resnet20", 10, initial_potentials=missing)
    with pytest.raises(ValueError, match="unknown stage9/act1$"):
        to_torch_state_dict(variables, "resnet20", 10,
                            initial_potentials={**potentials, "stage9/act1": 0.5})
    with pytest.raises(ValueError, match=r"layer 'stem_act' has shape \[8, 8, 15\]; expected "
                                         r"\[H, W, 16\] \(per neuron\), \[16\] \(per channel\)"):
        to_torch_state_dict(variables, "resnet20", 10,
                            initial_potentials={**potentials, "stem_act": np.zeros((8, 8, 15))})
    with pytest.raises(ValueError, match="must be a mapping"):
        to_torch_state_dict(variables, "resnet20", 10, initial_potentials=[0.5])

    exported = to_torch_state_dict(variables, "resnet20", 10, initial_potentials=potentials)
    rest, _ = split_potentials(exported)
    with pytest.raises(ValueError, match="holds no initial potentials"):
        potentials_from_torch_state_dict(rest, "resnet20", 10)
    with pytest.raises(ValueError, match=r"missing conv3_x.1.residual_function.2.v0; "
                                         r"unknown fc.v0$"):
        potentials_from_torch_state_dict(
            {**{k: v for k, v in exported.items() if k != "conv3_x.1.residual_function.2.v0"},
             "fc.v0": torch.zeros(10)}, "resnet20", 10)
    with pytest.raises(ValueError, match=r"conv1.2.v0 has shape \[8, 8, 16\]; expected "
                                         r"\[16, H, W\], \[16, 1, 1\] or \[\]"):
        potentials_from_torch_state_dict({**exported, "conv1.2.v0": torch.zeros(8, 8, 16)},
                                         "resnet20", 10)


def test_vgg_potentials_import_layout():
    # VGG's dense spiking layers ([F]) and a 1x1 feature map (vgg11 at 32x32:
    # layer5 is 2x2, so use per channel there); only the .v0 tensors are read.
    state = {}
    for b, widths, side in ((1, (64,), 32), (2, (128,), 16), (3, (256, 256), 8),
                            (4, (512, 512), 4), (5, (512, 512), 2)):
        for i, c in enumerate(widths):
            state[f"layer{b}.{4 * i + 2}.v0"] = torch.arange(c * side * side, dtype=torch.float32
                                                             ).reshape(c, side, side)
    state["layer5.6.v0"] = torch.arange(512.0).reshape(512, 1, 1)
    state["classifier.2.v0"] = torch.arange(4096.0)
    state["classifier.5.v0"] = torch.tensor(0.25)
    v0 = potentials_from_torch_state_dict(state, "vgg11", 10)
    assert list(v0)[:2] == ["layer1_act0", "layer2_act0"] and list(v0)[-2:] == ["act_fc1", "act_fc2"]
    assert v0["layer1_act0"].shape == (32, 32, 64) and v0["layer1_act0"].dtype == np.float32
    assert v0["layer1_act0"][0, 1, 2] == state["layer1.2.v0"][2, 0, 1]
    np.testing.assert_array_equal(v0["layer5_act1"], np.arange(512.0))
    np.testing.assert_array_equal(v0["act_fc1"], np.arange(4096.0))
    assert v0["act_fc2"].shape == () and v0["act_fc2"] == 0.25


# ---------------------------------------------------------------------------
# Checkpoint files and errors.

@pytest.fixture(scope="module")
def resnet20_state():
    return ref.randomize_(ref.make_model("resnet20", 10, LEVELS), seed=5).state_dict()


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_load_checkpoint_file_and_wrappers(tmp_path, resnet20_state):
    expected = from_torch_state_dict(resnet20_state, "resnet20", 10)
    for name, obj in [("plain", resnet20_state), ("sd", {"state_dict": resnet20_state}),
                      ("model", {"model": resnet20_state, "epoch": 7}),
                      ("ddp", {f"module.{k}": v for k, v in resnet20_state.items()}),
                      ("no_nbt", {k: v for k, v in resnet20_state.items()
                                  if not k.endswith("num_batches_tracked")})]:
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        assert_trees_equal(load_torch_checkpoint(str(path), "resnet20", 10), expected)


def test_unknown_keys(resnet20_state):
    state = dict(resnet20_state, **{"extra.weight": torch.zeros(3), "fc.scale": torch.zeros(1)})
    with pytest.raises(ValueError) as e:
        from_torch_state_dict(state, "resnet20", 10)
    assert "2 unexpected: extra.weight, fc.scale." in _message(e)
    assert "missing" not in _message(e) and "shape" not in _message(e)


def test_missing_keys(resnet20_state):
    state = {k: v for k, v in resnet20_state.items()
             if k not in ("conv1.1.running_var", "conv1.1.running_mean", "fc.bias")}
    with pytest.raises(ValueError) as e:
        from_torch_state_dict(state, "resnet20", 10)
    assert "3 missing: conv1.1.{running_mean,running_var}, fc.bias" in _message(e)


def test_shape_mismatch(resnet20_state):
    state = dict(resnet20_state)
    state["conv2_x.1.residual_function.0.weight"] = torch.zeros(16, 16, 1, 1)
    state["conv1.2.up"] = torch.zeros(2)
    with pytest.raises(ValueError) as e:
        from_torch_state_dict(state, "resnet20", 10)
    message = _message(e)
    assert "2 of the wrong shape" in message
    assert ("conv2_x.1.residual_function.0.weight [16, 16, 1, 1] (expected [16, 16, 3, 3])"
            in message)
    assert "conv1.2.up [2] (expected [1])" in message


def test_other_architecture():
    state = ref.randomize_(ref.make_model("resnet18", 10, LEVELS), seed=0).state_dict()
    with pytest.raises(ValueError) as e:
        from_torch_state_dict(state, "resnet34", 10)
    message = _message(e)
    # resnet34 has 3/4/6/3 blocks where resnet18 has 2/2/2/2: whole blocks missing.
    for block in ("conv2_x.2", "conv3_x.2", "conv3_x.3", "conv4_x.2", "conv4_x.5", "conv5_x.2"):
        assert f"{block}.* (" in message
    assert "unexpected" not in message
    assert "looks like resnet18 with 10 classes" in message


def test_other_class_count():
    state = ref.randomize_(ref.make_model("vgg11", 10, LEVELS), seed=0).state_dict()
    with pytest.raises(ValueError) as e:
        from_torch_state_dict(state, "vgg11", 100)
    message = _message(e)
    assert ("2 of the wrong shape: classifier.7.weight [10, 4096] (expected [100, 4096]), "
            "classifier.7.bias [10] (expected [100])") in message
    assert "looks like vgg11 with 10 classes" in message
    with pytest.raises(ValueError, match=r"classifier.1.weight \[4096, 512\] "
                                         r"\(expected \[4096, 25088\]\)"):
        from_torch_state_dict(state, "vgg11", 1000)  # the ImageNet head expects 224x224


def test_pth_that_is_not_a_state_dict(tmp_path, resnet20_state):
    whole = tmp_path / "whole.pth"
    torch.save(ref.make_model("resnet20", 10), whole)
    with pytest.raises(ValueError, match="save model.state_dict"):
        load_torch_checkpoint(str(whole), "resnet20", 10)
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(ValueError, match="expected a state dict .* got list"):
        load_torch_checkpoint(str(listed), "resnet20", 10)
    training = tmp_path / "training.pth"
    torch.save({"epoch": 3, "net": resnet20_state}, training)
    with pytest.raises(ValueError, match=r"not a state dict of tensors: no tensors at "
                                         r"'epoch' \(int\), "
                                         r"'net' \(OrderedDict\).*'state_dict' and 'model'"):
        load_torch_checkpoint(str(training), "resnet20", 10)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="could not read .*junk.pth as a PyTorch state dict"):
        load_torch_checkpoint(str(junk), "resnet20", 10)
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(str(tmp_path / "absent.pth"), "resnet20", 10)


def test_bad_arguments(resnet20_state):
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        from_torch_state_dict(resnet20_state, "resnet50", 10)
    with pytest.raises(ValueError, match="num_classes must be an int"):
        from_torch_state_dict(resnet20_state, "resnet20", 0)
    with pytest.raises(ValueError, match="image_size must be an int >= 32"):
        from_torch_state_dict(resnet20_state, "vgg16", 10, image_size=16)


def test_export_rejects_variables_of_another_model():
    variables = from_torch_state_dict(
        ref.randomize_(ref.make_model("resnet20", 10, LEVELS), seed=0).state_dict(),
        "resnet20", 10)
    del variables["batch_stats"]["stem_bn"]["var"]
    variables["params"]["fc"]["bias"] = jnp.zeros(11)
    with pytest.raises(ValueError) as e:
        to_torch_state_dict(variables, "resnet20", 10)
    message = _message(e)
    assert "1 missing: batch_stats.stem_bn.var" in message
    assert "params.fc.bias [11] (expected [10])" in message
    with pytest.raises(ValueError, match=r"do not fit resnet18 with 10 classes: \d+ missing: "
                                         r".*unexpected"):
        to_torch_state_dict(variables, "resnet18", 10)


# ---------------------------------------------------------------------------
# torch stays optional.

def test_import_cosjax_never_imports_torch():
    code = ("import sys, cosjax, cosjax.torch_interop; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_clear_import_error_without_torch(monkeypatch, tmp_path):
    state = {k: np.zeros(v.shape, np.float32) for k, v in
             ref.make_model("resnet20", 10).state_dict().items()}
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(ImportError, match=r"pip install cosjax\[torch\]"):
        load_torch_checkpoint(str(tmp_path / "x.pth"), "resnet20", 10)
    with pytest.raises(ImportError, match=r"pip install cosjax\[torch\]"):
        to_torch_state_dict({}, "resnet20", 10)
    # Importing NumPy state dicts needs no torch.
    variables = from_torch_state_dict(state, "resnet20", 10)
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
