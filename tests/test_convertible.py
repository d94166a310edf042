"""cosjax.check_convertible: decided from the traced program."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

import cosjax
from cosjax import QCFS
from cosjax.models import ARCHITECTURES, create_model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_no_refusal_on_the_zoo(arch):
    # Traced only (shapes), so even ResNet-34 costs little.
    model = create_model(arch, 10, 4)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    cosjax.check_convertible(model, variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    cosjax.check_convertible(model, variables, jnp.zeros((1, 32, 32, 3)), train=False)


class Ops(nn.Module):
    """dense - QCFS - <op> - dense - QCFS - dense."""

    op: str

    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Dense(8, name="fc1")(x))            # analog: anything goes
        h = QCFS(4, name="act1")(a)
        scale = self.param("scale", nn.initializers.ones, (8,))
        ops = {
            "concat_pad_transpose": lambda h: jnp.pad(jnp.concatenate([h, 2 * h], -1),
                                                     ((0, 0), (1, 1))).T.T,
            "sum_and_scale": lambda h: h.reshape(-1, 2, 4).sum(1).repeat(2, -1) * scale / 3.0,
            "const_cond": lambda h: lax.cond(scale.sum() > 0, lambda h: h, lambda h: -h, h),
            "divide_by_activation": lambda h: 1.0 / (h + 1.0),
            "exp": jnp.exp,
            "while": lambda h: lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, c[1] * 1),
                                              (0, h))[1],
            "argmax_index": lambda h: jnp.broadcast_to(
                jnp.take_along_axis(h, jnp.argmax(h, -1, keepdims=True), -1), h.shape),
        }
        h = ops[self.op](h)
        h = QCFS(4, name="act2")(nn.Dense(8, name="fc2")(h))
        return nn.Dense(3, name="out")(h)


@pytest.mark.parametrize("op", ["concat_pad_transpose", "sum_and_scale", "const_cond"])
def test_affine_operations_pass(op):
    model = Ops(op)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))
    cosjax.check_convertible(model, variables, jnp.zeros((2, 5)))


@pytest.mark.parametrize("op,primitive", [("divide_by_activation", "div"), ("exp", "exp"),
                                          ("while", "while"), ("argmax_index", "argmax")])
def test_other_operations_are_refused(op, primitive):
    model = Ops(op)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match=f"`{primitive}` at the top-level module Ops"):
        cosjax.check_convertible(model, variables, jnp.zeros((2, 5)))


def test_output_head_is_checked_and_models_need_qcfs():
    class SoftmaxHead(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.softmax(nn.Dense(3, name="fc")(QCFS(4, name="act")(x)))

    model = SoftmaxHead()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match="not convertible"):
        cosjax.check_convertible(model, variables, jnp.zeros((2, 5)))
    dense = nn.Dense(3)
    with pytest.raises(ValueError, match="no QCFS layers"):
        cosjax.check_convertible(dense, dense.init(jax.random.PRNGKey(0), jnp.zeros((1, 5))),
                                 jnp.zeros((2, 5)))


def test_operations_across_the_batch_are_refused():
    class BatchMean(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = QCFS(4, name="act")(nn.Dense(4, name="fc1")(x))
            h = h - h.mean(axis=0)                     # mixes examples
            return nn.Dense(3, name="fc2")(QCFS(4, name="act2")(h))

    model = BatchMean()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match="`reduce_sum` at .*batch axis"):
        cosjax.check_convertible(model, variables, jnp.zeros((2, 5)))
