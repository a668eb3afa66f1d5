"""config.precision: the precision of every convolution and matmul in the compiled steps."""

import jax.numpy as jnp
import pytest
from flax import nnx

from configs import nmnist
from plif_jax import models
from plif_jax.runtime import parallel
from plif_jax.training import config as config_lib
from plif_jax.training import steps as steps_lib


def _lowered_train(precision):
    model = models.create_model("nmnist", rngs=nnx.Rngs(0),
                                channels=4, input_size=16, T=3)  # fmt: skip
    config = nmnist.get_config()
    steps = steps_lib.jit_steps(
        model, tx=steps_lib.make_optimizer(config), preprocess=lambda x, train, rng: x,
        seed=0, num_classes=10, time_steps=3, mesh=parallel.create_mesh(1), precision=precision,
    )  # fmt: skip
    state = steps_lib.init_train_state(model, config)
    batch = {"x": jnp.zeros((3, 2, 2, 16, 16)), "y": jnp.zeros((2,), jnp.int32),
             "mask": jnp.ones((2,))}  # fmt: skip
    i32 = jnp.int32(0)
    return steps.train.lower(state, batch, jnp.float32(1e-3), i32, i32).as_text()


def test_highest_precision_reaches_every_convolution_and_matmul():
    text = _lowered_train("highest")
    assert text.count("precision HIGHEST") >= 4  # convs forward and backward, FC matmuls
    assert "precision HIGHEST" not in _lowered_train("default")


def test_the_config_field_is_checked():
    config = nmnist.get_config()
    assert config.precision == "default"
    config.precision = "highest"
    config_lib.validate(config)
    config.precision = "fast"
    with pytest.raises(ValueError, match=r"Unknown precision 'fast'; choose one of 'default'"):
        config_lib.validate(config)
