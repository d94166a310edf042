"""PyTorch checkpoints of the official COS / QCFS code <-> cosjax variables.

The official code (hzc1208/ANN2SNN_COS, and putshua/SNN_conversion_QCFS,
whose VGG and ResNet use the same module names) saves
``torch.save(model.state_dict(), path)`` of a VGG or ResNet whose ReLUs were
replaced by QCFS modules holding a threshold ``up`` of shape ``[1]``.
This module maps those state dicts onto the Flax variables of
:func:`cosjax.create_model` (``{'params': ..., 'batch_stats': ...}``) and back:

=====================================  =========================================
PyTorch (NCHW)                         cosjax (NHWC)
=====================================  =========================================
conv ``weight [O, I, kh, kw]``         ``kernel [kh, kw, I, O]``
linear ``weight [out, in]``            ``kernel [in, out]`` (VGG's first dense:
                                       rows reordered from C,H,W to H,W,C)
BN ``weight, bias``                    params ``scale, bias``
BN ``running_mean, running_var``       batch_stats ``mean, var``
BN ``num_batches_tracked``             ignored (exported as 0)
QCFS ``up [1]``                        QCFS param ``lam []``
=====================================  =========================================

Static initial potentials (:mod:`cosjax.static_calibration`) travel with the
model as one extra tensor ``<QCFS module>.v0`` per spiking layer
(``to_torch_state_dict(..., initial_potentials=v0)``,
:func:`potentials_from_torch_state_dict`). The official model has no such
tensors: load the rest with ``strict=True`` after popping the ``.v0`` keys,
or ``strict=False``. Units: a fraction of the layer's threshold, as in
cosjax (the IF neuron runs on ``x / up`` with threshold 1; 0.5 is plain
conversion's start; the absolute potential is ``v0 * up``). Shapes:

=====================================  =========================================
PyTorch (NCHW)                         cosjax (NHWC)
=====================================  =========================================
conv layer, per neuron ``[C, H, W]``   ``[H, W, C]``
conv layer, per channel ``[C, 1, 1]``  ``[C]``
dense layer ``[F]``                    ``[F]`` (per neuron = per channel)
per layer ``[]``                       ``[]``
=====================================  =========================================

Module names: VGG ``layer{b}.{4i}`` conv, ``.{4i+1}`` BN, ``.{4i+2}`` QCFS
(``.{4i+3}`` is a dropout, the block's last module a pool),
``classifier.{1,4,7}`` dense, ``classifier.{2,5}`` QCFS; ResNet ``conv1.{0,1,2}``
(stem), ``conv{s+1}_x.{b}.residual_function.{0..4}``,
``conv{s+1}_x.{b}.shortcut.{0,1}``, ``conv{s+1}_x.{b}.relu`` and ``fc``.

The official VGG has an ImageNet head (first dense ``512*7*7 -> 4096``, for
224x224 inputs) exactly when ``num_classes == 1000`` and a CIFAR head
(``512 -> 4096``, 32x32 inputs) otherwise; ``image_size`` overrides that rule.
ResNets take any input size.

PyTorch is optional: it is imported only inside the functions that need it
(``pip install cosjax[torch]``). :func:`from_torch_state_dict` works on any
mapping of names to tensors or NumPy arrays without importing it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cosjax.checks import check_int
from cosjax.models import ARCHITECTURES, create_model
from cosjax.static_calibration import neuron_shapes

OFFICIAL_ARCHITECTURES = tuple(sorted(a for a in ARCHITECTURES if a != "fastnet"))
"""The architectures the official PyTorch code defines (FastNet is this project's)."""


__all__ = ["default_image_size", "from_torch_state_dict", "load_torch_checkpoint",
           "potentials_from_torch_state_dict", "to_torch_state_dict", "torch_module_name"]

Variables = dict[str, Any]
FlaxPath = tuple[str, ...]  # (collection, module, ..., leaf name)

# Wrappers around a state dict that training scripts commonly save.
WRAPPER_KEYS = ("state_dict", "model")
DDP_PREFIX = "module."  # keys of a model saved inside (Distributed)DataParallel
NUM_BATCHES_TRACKED = "num_batches_tracked"
POTENTIAL = "v0"  # leaf name of a spiking module's static initial potential


def _import_torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError("PyTorch is needed to read or write .pth checkpoints: "
                          "pip install cosjax[torch]") from err
    return torch


# ---------------------------------------------------------------------------
# The correspondence between torch keys and Flax leaves of one architecture.

@dataclasses.dataclass(frozen=True)
class _Entry:
    """One torch tensor and the Flax leaf it maps to (None: not imported)."""

    torch_key: str
    torch_shape: tuple[int, ...]
    flax_path: FlaxPath | None
    to_flax: Callable[[np.ndarray], np.ndarray] | None = None
    to_torch: Callable[[np.ndarray], np.ndarray] | None = None


def _vgg_module(name: str) -> str:
    match = re.fullmatch(r"layer(\d+)_(conv|bn|act)(\d+)", name)
    if match:
        block, kind, index = match.groups()
        return f"layer{block}.{4 * int(index) + ('conv', 'bn', 'act').index(kind)}"
    return {"fc1": "classifier.1", "act_fc1": "classifier.2", "fc2": "classifier.4",
            "act_fc2": "classifier.5", "fc3": "classifier.7"}[name]


_RESNET_TOP = {"stem_conv": "conv1.0", "stem_bn": "conv1.1", "stem_act": "conv1.2", "fc": "fc"}
_RESNET_BLOCK = {"conv1": "residual_function.0", "bn1": "residual_function.1",
                 "act1": "residual_function.2", "conv2": "residual_function.3",
                 "bn2": "residual_function.4", "shortcut_conv": "shortcut.0",
                 "shortcut_bn": "shortcut.1", "act2": "relu"}


def _resnet_module(path: tuple[str, ...]) -> str:
    if len(path) == 1:
        return _RESNET_TOP[path[0]]
    stage, block = re.fullmatch(r"stage(\d+)_block(\d+)", path[0]).groups()
    return f"conv{int(stage) + 1}_x.{block}.{_RESNET_BLOCK[path[1]]}"


def torch_module_name(arch: str, module_path: tuple[str, ...]) -> str:
    """The official code's module name for a cosjax module path.

    E.g. ``('layer1_act0',)`` -> ``'layer1.2'`` (vgg*),
    ``('stage1_block0', 'act2')`` -> ``'conv2_x.0.relu'`` (resnet*).
    """
    if arch.startswith("vgg"):
        (name,) = module_path
        return _vgg_module(name)
    return _resnet_module(tuple(module_path))


def default_image_size(arch: str, num_classes: int) -> int:
    """The input size the official model is built for: 224 for VGG with
    1000 classes (ImageNet head, 7x7x512 features), else 32."""
    return 224 if arch.startswith("vgg") and num_classes == 1000 else 32


def _check_args(arch: str, num_classes: int, image_size: int | None) -> int:
    if arch not in OFFICIAL_ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} for PyTorch checkpoints; choose one of "
                         f"{', '.join(OFFICIAL_ARCHITECTURES)}")
    check_int("num_classes", num_classes, 1)
    if image_size is None:
        return default_image_size(arch, num_classes)
    check_int("image_size", image_size, 32)
    return image_size


def _dense_from_nchw(c: int, h: int, w: int):
    """Converters for a dense layer fed by a flattened ``[C, H, W]`` (torch)
    / ``[H, W, C]`` (cosjax) feature map."""
    def to_flax(weight):  # [out, C*H*W] -> [H*W*C, out]
        out = weight.shape[0]
        return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)

    def to_torch(kernel):  # [H*W*C, out] -> [out, C*H*W]
        out = kernel.shape[1]
        return kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w)
    return to_flax, to_torch


def _module_entries(arch: str, module_path: tuple[str, ...], leaves: dict[FlaxPath, tuple],
                    feature_map: tuple[int, int, int] | None) -> list[_Entry]:
    """Entries of one Flax module given its ``{(collection, leaf): shape}``;
    ``feature_map`` is the ``(C, H, W)`` input of VGG's ``fc1`` (else None)."""
    prefix = torch_module_name(arch, module_path)
    names = {leaf for _, leaf in leaves}
    params = lambda leaf: ("params",) + module_path + (leaf,)  # noqa: E731
    identity = lambda a: a  # noqa: E731
    entries = []
    if "lam" in names:  # QCFS threshold
        entries.append(_Entry(f"{prefix}.up", (1,), params("lam"),
                              lambda a: a.reshape(()), lambda a: a.reshape(1)))
    elif "scale" in names:  # BatchNorm
        (channels,) = leaves[("params", "scale")]
        for leaf, key, coll in (("scale", "weight", "params"), ("bias", "bias", "params"),
                                ("mean", "running_mean", "batch_stats"),
                                ("var", "running_var", "batch_stats")):
            entries.append(_Entry(f"{prefix}.{key}", (channels,), (coll,) + module_path + (leaf,),
                                  identity, identity))
        entries.append(_Entry(f"{prefix}.{NUM_BATCHES_TRACKED}", (), None))
    else:
        kernel = leaves[("params", "kernel")]
        if len(kernel) == 4:  # conv [kh, kw, I, O] <-> [O, I, kh, kw]
            kh, kw, cin, cout = kernel
            entries.append(_Entry(f"{prefix}.weight", (cout, cin, kh, kw), params("kernel"),
                                  lambda a: a.transpose(2, 3, 1, 0),
                                  lambda a: a.transpose(3, 2, 0, 1)))
        else:  # dense [in, out] <-> [out, in]
            fan_in, fan_out = kernel
            if feature_map is not None and module_path == ("fc1",):
                c, h, w = feature_map
                assert c * h * w == fan_in, (feature_map, kernel)
                to_flax, to_torch = _dense_from_nchw(c, h, w)
            else:
                to_flax, to_torch = (lambda a: a.T), (lambda a: a.T)
            entries.append(_Entry(f"{prefix}.weight", (fan_out, fan_in), params("kernel"),
                                  to_flax, to_torch))
        if ("params", "bias") in leaves:
            (channels,) = leaves[("params", "bias")]
            entries.append(_Entry(f"{prefix}.bias", (channels,), params("bias"),
                                  identity, identity))
    return entries


# PyTorch's registration order where it is not alphabetical.
_MODULE_ORDER = {"residual_function": 0, "shortcut": 1, "relu": 2, "classifier": 3}
_LEAF_ORDER = ("weight", "bias", "running_mean", "running_var", NUM_BATCHES_TRACKED, "up",
               POTENTIAL)


def _natural_key(key: str):
    """Sort key giving the official model's ``state_dict()`` order: modules
    in registration order (numbers compared as numbers), then each module's
    tensors (weight, bias, running statistics)."""
    module, _, leaf = key.rpartition(".")
    parts = tuple((0, int(p), "") if p.isdigit() else (1, _MODULE_ORDER.get(p, -1), p)
                  for p in module.split(".") if p)
    rank = _LEAF_ORDER.index(leaf) if leaf in _LEAF_ORDER else len(_LEAF_ORDER)
    return parts + ((2, rank, leaf),)


@functools.lru_cache(maxsize=32)
def _entries(arch: str, num_classes: int, image_size: int) -> tuple[_Entry, ...]:
    """Every tensor of the official state dict of ``arch``, from the shapes
    of ``create_model(arch, num_classes).init`` (computed abstractly)."""
    model = create_model(arch, num_classes, levels=1)  # levels does not change variables
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    modules: dict[tuple[str, ...], dict[FlaxPath, tuple]] = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        modules.setdefault(path[1:-1], {})[(path[0], path[-1])] = tuple(leaf.shape)
    feature_map = None
    if arch.startswith("vgg"):  # the [C, H, W] map that VGG's first dense layer flattens
        side = image_size
        for _ in range(5):  # five 2x2 average pools (floor, as in PyTorch)
            side //= 2
        feature_map = (512, side, side)
    entries = [e for module_path, leaves in modules.items()
               for e in _module_entries(arch, module_path, leaves, feature_map)]
    return tuple(sorted(entries, key=lambda e: _natural_key(e.torch_key)))


@functools.lru_cache(maxsize=32)
def _spiking_layers(arch: str, num_classes: int, image_size: int
                    ) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """``(cosjax layer, torch module, neuron shape)`` of every spiking layer
    in network order, the shapes at ``image_size`` (computed abstractly)."""
    model = create_model(arch, num_classes, levels=1)
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    shapes = neuron_shapes(model, variables, (image_size, image_size, 3))
    return tuple((name, torch_module_name(arch, tuple(name.split("/"))), shape)
                 for name, shape in shapes.items())


def _potential_to_torch(layer: str, v0: Any, shape: tuple[int, ...]) -> np.ndarray:
    """One layer's static v0 (cosjax, any granularity) -> its torch layout."""
    v0 = np.asarray(v0)
    channels, conv = shape[-1], len(shape) == 3
    if not np.issubdtype(v0.dtype, np.floating):
        raise ValueError(f"initial potential of layer {layer!r} must be floating point, "
                         f"got {v0.dtype}")
    if v0.shape == () or (not conv and v0.shape == (channels,)):
        return v0
    if conv and v0.shape == (channels,):
        return v0.reshape(channels, 1, 1)
    if conv and v0.ndim == 3 and v0.shape[-1] == channels:
        return v0.transpose(2, 0, 1)
    want = f"[H, W, {channels}] (per neuron), [{channels}] (per channel)" if conv else \
        f"[{channels}] (per neuron or channel)"
    raise ValueError(f"initial potential of layer {layer!r} has shape {_shape_str(v0.shape)}; "
                     f"expected {want} or [] (per layer)")


def _potential_from_torch(key: str, v0: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One ``<module>.v0`` tensor -> cosjax's layout (see the module docstring)."""
    channels, conv = shape[-1], len(shape) == 3
    if not np.issubdtype(v0.dtype, np.floating):
        raise ValueError(f"{key} must be floating point, got {v0.dtype}")
    if v0.shape == () or (not conv and v0.shape == (channels,)):
        return v0
    if conv and v0.shape == (channels, 1, 1):
        return v0.reshape(channels)
    if conv and v0.ndim == 3 and v0.shape[0] == channels:
        return v0.transpose(1, 2, 0)
    want = f"[{channels}, H, W], [{channels}, 1, 1]" if conv else f"[{channels}]"
    raise ValueError(f"{key} has shape {_shape_str(v0.shape)}; expected {want} or []")


def _check_layers(given: Any, names: list[str], what: str) -> None:
    """``given`` names exactly the spiking layers ``names`` (else ValueError)."""
    missing = [n for n in names if n not in given]
    unknown = [n for n in given if n not in names]
    if missing or unknown:
        parts = ([f"missing {', '.join(map(str, missing))}"] if missing else []) + (
            [f"unknown {', '.join(map(str, unknown))}"] if unknown else [])
        raise ValueError(f"{what} must name every spiking layer once: " + "; ".join(parts))


# ---------------------------------------------------------------------------
# Error messages that list everything that does not fit, compactly.

def _collapse(keys: list[str], others: set[str]) -> list[str]:
    """Groups ``keys``: several tensors of a module absent from ``others``
    become ``prefix.* (n tensors)``; the rest are grouped per module as
    ``module.{a,b}``."""
    def absent(prefix: str) -> bool:
        return not any(o == prefix or o.startswith(prefix + ".") for o in others)

    whole: dict[str, list[str]] = {}
    rest: dict[str, list[str]] = {}
    for key in sorted(keys, key=_natural_key):
        parts = key.split(".")
        top = next((".".join(parts[:i]) for i in range(1, len(parts))
                    if absent(".".join(parts[:i]))), None)
        if top is not None:
            whole.setdefault(top, []).append(key)
        else:
            module, _, leaf = key.rpartition(".")
            rest.setdefault(module, []).append(leaf)
    items = [f"{p}.* ({len(ks)} tensors)" if len(ks) > 1 else ks[0] for p, ks in whole.items()]
    for module, leaves in rest.items():
        head = f"{module}." if module else ""
        items.append(head + leaves[0] if len(leaves) == 1 else f"{head}{{{','.join(leaves)}}}")
    return sorted(items, key=_natural_key)


def _describe(missing: list[str], unexpected: list[str],
              wrong: list[tuple[str, tuple, tuple]], expected: set[str], present: set[str]) -> str:
    """``wrong``: ``(key, shape found, shape expected)``; tensors of one
    module with the same two shapes are listed together."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: " + ", ".join(_collapse(missing, present)))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: " + ", ".join(_collapse(unexpected, expected)))
    if wrong:
        groups: dict[tuple[str, tuple, tuple], list[str]] = {}
        for key, got, want in wrong:
            module, _, leaf = key.rpartition(".")
            groups.setdefault((module, got, want), []).append(leaf)
        items = []
        for (module, got, want), leaves in groups.items():
            names = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
            items.append(f"{module}.{names} {_shape_str(got)} (expected {_shape_str(want)})")
        parts.append(f"{len(wrong)} of the wrong shape: " + ", ".join(items))
    return "; ".join(parts)


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _guess(keys: set[str], shapes: Mapping[str, tuple]) -> str:
    """Which official architecture ``keys`` is the state dict of, if any."""
    for arch in OFFICIAL_ARCHITECTURES:
        names = {e.torch_key for e in _entries(arch, 10, 32)}
        optional = {k for k in names if k.endswith(NUM_BATCHES_TRACKED)}
        if names - optional <= keys <= names:
            head = shapes.get("classifier.7.weight" if arch.startswith("vgg") else "fc.weight")
            classes = f" with {head[0]} classes" if head and len(head) == 2 else ""
            fc1 = shapes.get("classifier.1.weight")
            size = (" (VGG head for 224x224 images)" if fc1 and len(fc1) == 2 and fc1[1] == 512 * 49
                    else "")
            return f" (it looks like {arch}{classes}{size})"
    return ""


# ---------------------------------------------------------------------------
# Import.

def _as_state_dict(obj: Any) -> dict[str, Any]:
    """Unwraps ``{'state_dict': sd}`` / ``{'model': sd}`` and a DataParallel
    ``module.`` prefix; checks that the result maps names to arrays."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict (a mapping of parameter names to tensors), "
                         f"got {type(obj).__name__}")
    for wrapper in WRAPPER_KEYS:
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items()
           if not isinstance(k, str) or not hasattr(v, "shape")]
    if bad or not obj:
        problem = "it is empty"
        if bad:
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            problem = "no tensors at " + ", ".join(bad[:10]) + more
        wrappers = " and ".join(repr(w) for w in WRAPPER_KEYS)
        raise ValueError(f"not a state dict of tensors: {problem}. Save one with "
                         f"torch.save(model.state_dict(), path); the wrappers {wrappers} "
                         f"around it are accepted too")
    if all(k.startswith(DDP_PREFIX) for k in obj):
        obj = {k[len(DDP_PREFIX):]: v for k, v in obj.items()}
    return dict(obj)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def from_torch_state_dict(state_dict: Mapping[str, Any], arch: str, num_classes: int, *,
                          image_size: int | None = None) -> Variables:
    """Converts an official COS / QCFS state dict to cosjax variables.

    Args:
      state_dict: ``{name: tensor}`` as saved by ``torch.save(model.state_dict())``
        (torch tensors or NumPy arrays); ``{'state_dict': sd}``, ``{'model': sd}``
        and keys prefixed ``module.`` (DataParallel) are accepted too.
      arch: a :data:`cosjax.ARCHITECTURES` name (``vgg16``, ``resnet20``, ...).
      num_classes: classes of the checkpoint's head.
      image_size: input side the VGG head is built for (default
        :func:`default_image_size`: 224 for 1000 classes, else 32); ignored
        by ResNets.
    Returns:
      ``{'params': ..., 'batch_stats': ...}`` for
      ``create_model(arch, num_classes, levels)`` (any ``levels``: L is not
      stored in checkpoints; use the one the network was trained with),
      arrays in the checkpoint's float dtype (float64 becomes float32 unless
      ``jax_enable_x64`` is on).
    Raises:
      ValueError: listing every missing, unexpected and wrongly shaped tensor
        (``num_batches_tracked`` may be absent; its value is ignored).

    Static initial potentials ``<QCFS module>.v0`` in the state dict are
    allowed and not part of the variables: read them with
    :func:`potentials_from_torch_state_dict`.
    """
    size = _check_args(arch, num_classes, image_size)
    state = _as_state_dict(state_dict)
    entries = _entries(arch, num_classes, size)
    expected = {e.torch_key: e for e in entries}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k, e in expected.items() if k not in state and e.flax_path is not None]
    potentials = {f"{module}.{POTENTIAL}" for _, module, _ in _spiking_layers(arch, num_classes, size)}
    unexpected = [k for k in state if k not in expected and k not in potentials]
    wrong = [(k, shapes[k], e.torch_shape) for k, e in expected.items()
             if k in state and shapes[k] != e.torch_shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"state dict does not fit {arch} with {num_classes} classes"
            + (f" and {size}x{size} inputs" if arch.startswith("vgg") else "")
            + _guess(set(state), shapes) + ": "
            + _describe(missing, unexpected, wrong, set(expected), set(state)) + ".")
    flat = {e.flax_path: jnp.asarray(e.to_flax(_to_numpy(state[e.torch_key])))
            for e in entries if e.flax_path is not None}
    return traverse_util.unflatten_dict(flat)


def load_torch_checkpoint(path: str | os.PathLike, arch: str, num_classes: int, *,
                          image_size: int | None = None) -> Variables:
    """Reads a ``.pth`` state dict of the official code as cosjax variables.

    ``variables = load_torch_checkpoint('QCFS_CIFAR100_vgg16_L4.pth', 'vgg16', 100)``
    then ``cosjax.simulate(create_model('vgg16', 100, levels=4), variables, images, ...)``.
    The file is read with ``torch.load(..., weights_only=True)`` on the CPU:
    no code from it is ever run. See :func:`from_torch_state_dict` for the
    arguments and errors.

    Raises:
      ImportError: PyTorch is not installed.
      ValueError: the file is not a PyTorch checkpoint, holds no state dict,
        or does not fit ``arch`` / ``num_classes``.
    """
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch raises many types for unreadable files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        hint = (" It holds pickled Python objects (e.g. a whole model saved with "
                "torch.save(model)); save model.state_dict() instead."
                if "weights only" in str(err).lower() else "")
        raise ValueError(f"could not read {path} as a PyTorch state dict: "
                         f"{type(err).__name__}: {first[:200]}.{hint}") from err
    try:
        return from_torch_state_dict(obj, arch, num_classes, image_size=image_size)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def potentials_from_torch_state_dict(state_dict: Mapping[str, Any], arch: str,
                                     num_classes: int, *,
                                     image_size: int | None = None) -> dict[str, np.ndarray]:
    """The static initial potentials ``<QCFS module>.v0`` of a state dict
    written by ``to_torch_state_dict(..., initial_potentials=...)``.

    ``v0 = potentials_from_torch_state_dict(sd, 'resnet20', 10)`` then
    ``cosjax.simulate_static(model, from_torch_state_dict(sd, 'resnet20', 10),
    images, v0, time_steps=T)``. For a ``.pth`` file, pass
    ``torch.load(path, map_location='cpu', weights_only=True)``.

    Args:
      state_dict, arch, num_classes, image_size: as in :func:`from_torch_state_dict`.
    Returns:
      ``{layer: v0}`` in network order, NumPy in the tensors' dtype, in units
      of the layer's threshold, each of the granularity it was saved with
      (torch ``[C, H, W]`` -> ``[H, W, C]``, ``[C, 1, 1]`` -> ``[C]``, ``[F]``
      and ``[]`` unchanged; see the module docstring). A per-neuron potential
      of a 1x1 feature map comes back per channel (the same values).
    Raises:
      ValueError: the state dict holds no potentials, or not one for every
        spiking layer (the message names the missing and unknown ones), or
        one of the wrong shape.
    """
    size = _check_args(arch, num_classes, image_size)
    state = _as_state_dict(state_dict)
    layers = {f"{module}.{POTENTIAL}": (name, shape)
              for name, module, shape in _spiking_layers(arch, num_classes, size)}
    present = [k for k in state if k == POTENTIAL or k.endswith("." + POTENTIAL)]
    if not present:
        raise ValueError(f"the state dict holds no initial potentials (no '<module>.{POTENTIAL}' "
                         f"tensors); write them with to_torch_state_dict(..., "
                         f"initial_potentials=...)")
    _check_layers(present, list(layers), "the state dict's initial potentials")
    return {name: _potential_from_torch(key, _to_numpy(state[key]), shape)
            for key, (name, shape) in layers.items()}


# ---------------------------------------------------------------------------
# Export.

def to_torch_state_dict(variables: Mapping[str, Any], arch: str, num_classes: int, *,
                        image_size: int | None = None,
                        initial_potentials: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Converts cosjax variables to a state dict of the official model.

    The result loads with ``model.load_state_dict(sd, strict=True)`` into the
    official ``vgg16(num_classes)`` etc. after its activations were replaced
    by QCFS modules (``replace_activation_by_floor``) and its max-pools by
    average pools. ``num_batches_tracked`` is exported as 0 (cosjax does not
    count batches); tensors keep the variables' float dtype.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` of
        ``create_model(arch, num_classes, levels)``.
      arch, num_classes, image_size: as in :func:`from_torch_state_dict`.
      initial_potentials: optional static potentials ``{layer: v0}``
        (:func:`cosjax.static_calibration.calibrate_static`, any granularity
        per layer, in units of the layer's threshold) for every spiking
        layer; each is exported as ``<QCFS module>.v0`` in the layout of the
        module docstring (per neuron ``[H, W, C]`` -> ``[C, H, W]``, per
        channel ``[C]`` -> ``[C, 1, 1]``), keeping its dtype. The spatial
        size of a per-neuron potential is not checked (it depends on the
        input size; :func:`cosjax.static_calibration.simulate_static` checks
        it against the images).
    Returns:
      ``{name: torch.Tensor}`` in natural key order (a ``.v0`` right after
      its module's ``up``).
    Raises:
      ValueError: listing every missing, unexpected and wrongly shaped leaf;
        naming every missing or unknown layer of ``initial_potentials`` and
        a potential of the wrong shape.
      ImportError: PyTorch is not installed.
    """
    torch = _import_torch()
    size = _check_args(arch, num_classes, image_size)
    if not isinstance(variables, Mapping):
        raise ValueError(f"variables must be a mapping {{'params': ..., 'batch_stats': ...}}, "
                         f"got {type(variables).__name__}")
    entries = _entries(arch, num_classes, size)
    flat = {"/".join(p): v for p, v in traverse_util.flatten_dict(variables).items()}
    expected = {"/".join(e.flax_path): e for e in entries if e.flax_path is not None}
    wrong = []
    for name, e in expected.items():
        if name in flat:
            want = e.to_flax(np.empty(e.torch_shape, np.int8)).shape
            got = tuple(np.shape(flat[name]))
            if got != want:
                wrong.append((name.replace("/", "."), got, want))
    missing = [k for k in expected if k not in flat]
    unexpected = [k for k in flat if k not in expected]
    if missing or unexpected or wrong:
        slash = lambda keys: [k.replace("/", ".") for k in keys]  # noqa: E731
        raise ValueError(
            f"variables do not fit {arch} with {num_classes} classes: "
            + _describe(slash(missing), slash(unexpected), wrong,
                        set(slash(expected)), set(slash(flat))) + ".")
    arrays = {}
    if initial_potentials is not None:
        if not isinstance(initial_potentials, Mapping):
            raise ValueError(f"initial_potentials must be a mapping {{layer: v0}}, "
                             f"got {type(initial_potentials).__name__}")
        layers = _spiking_layers(arch, num_classes, size)
        _check_layers(initial_potentials, [name for name, _, _ in layers], "initial_potentials")
        for name, module, shape in layers:
            arrays[f"{module}.{POTENTIAL}"] = _potential_to_torch(
                name, initial_potentials[name], shape)
    state = {}
    for e in entries:
        if e.flax_path is None:
            state[e.torch_key] = torch.zeros((), dtype=torch.int64)
        else:
            array = e.to_torch(np.asarray(flat["/".join(e.flax_path)]))
            state[e.torch_key] = torch.from_numpy(np.array(array, order="C", copy=True))
    if not arrays:
        return state
    for key, array in arrays.items():
        state[key] = torch.from_numpy(np.array(array, order="C", copy=True))
    return {key: state[key] for key in sorted(state, key=_natural_key)}
