"""Rematerialisation (``remat_chunk``): the time-chunked forward gives the default path's results.

Tiny N-MNIST-style and MNIST-style nets in float64 (x64 on inside this module only), train and
eval mode, ``remat_chunk`` in {1, 2, T}: counts, every neuron's spikes and the loss are equal to
the default path's, gradients of every parameter (PLIF ``w`` included) and the BatchNorm running
statistics agree to 1e-6, the dropout stream advances the same, and the option's bad values
raise errors that name the fix.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from plif_jax import layers, models, neurons
from plif_jax.ops import xla_cpu
from plif_jax.training import run as train
from tests.support.paper import dataset_info, load_config

T = 4
BATCH = 3
NUM_CLASSES = 10
# name -> (options, input shape). The weights are scaled up (see _build) so that they spike.
NETS = {
    "nmnist": (
        dict(channels=4, input_size=16, number_layer=2, hidden=16, T=T),
        (T, BATCH, 2, 16, 16),
    ),
    "mnist": (dict(channels=4, input_size=16, hidden=16, T=T), (BATCH, 1, 16, 16)),
}
CHUNKS = (1, 2, T)


# float64 (exact comparisons are meaningful there), XLA's optimisations off; restored after.
pytestmark = pytest.mark.usefixtures("float64")


def _build(name: str, chunk: int | None, *, train_mode: bool, dropout_seed: int = 1):
    """The net in float64 (parameters and statistics too), non-trivial BN statistics."""
    options, _ = NETS[name]
    model = models.create_model(
        name,
        rngs=nnx.Rngs(params=0, dropout=dropout_seed),
        remat_chunk=chunk,
        dtype=jnp.float64,
        **options,
    )
    state = nnx.state(model)
    nnx.update(
        model,
        jax.tree.map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state
        ),
    )
    rng = np.random.default_rng(5)
    # Gains that make every layer of these tiny nets fire at 5-45% in both modes (at the
    # default init the eval-mode nets, normalised by the running statistics, stay silent).
    for attr, gain in (("conv0", 4.0), ("conv1", 4.0), ("fc0", 10.0), ("fc1", 10.0)):
        kernel = model.named_layers()[attr].kernel
        kernel[...] = kernel[...] * gain
    for attr in ("bn0", "bn1"):
        bn = model.named_layers()[attr]
        bn.mean[...] = jnp.asarray(rng.uniform(-0.3, 0.3, bn.mean.shape))
        bn.var[...] = jnp.asarray(rng.uniform(0.2, 0.6, bn.var.shape))
        bn.scale[...] = jnp.asarray(rng.uniform(0.8, 1.6, bn.scale.shape))
    model.train() if train_mode else model.eval()
    return model


def _input(name: str) -> jax.Array:
    shape = NETS[name][1]
    rng = np.random.default_rng(7)
    if name == "nmnist":
        return jnp.asarray(rng.poisson(1.0, shape), jnp.float64)
    return jnp.asarray(3.0 * rng.standard_normal(shape), jnp.float64)


def _leaves(tree) -> list[np.ndarray]:
    """Leaves as numpy arrays (PRNG keys as their raw key data)."""
    out = []
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append(np.asarray(leaf))
    return out


def _flat(state) -> dict[str, np.ndarray]:
    """``{'bn0/mean': array, ...}`` of a state's float and int leaves (PRNG keys left out)."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        if not jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            out["/".join(map(str, path))] = np.asarray(value)
    return out


@functools.cache
def _grad_fn(graphdef):
    """Loss, counts, firing rates, updated state and parameter gradients (compiled per net)."""

    @jax.jit
    def run(params, rest, x, y):
        def objective(params, rest):
            model = nnx.merge(graphdef, params, rest, copy=True)
            counts, rates = models.run_with_rates(model, x)
            _, _, rest = nnx.split(model, nnx.Param, ...)
            loss = train.loss_fn(counts, y, jnp.ones(y.shape, counts.dtype), NUM_CLASSES, T)
            return loss, (counts, rates, rest)

        return jax.value_and_grad(objective, has_aux=True)(params, rest)

    return run


@functools.cache
def _traces_fn(graphdef):
    @jax.jit
    def run(state, x):
        model = nnx.merge(graphdef, state, copy=True)
        counts, traces = models.run_with_traces(model, x)
        return counts, traces, nnx.state(model)

    return run


def _run(model, x):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    y = jnp.arange(BATCH) % NUM_CLASSES
    (loss, (counts, rates, new_rest)), grads = _grad_fn(graphdef)(params, rest, x, y)
    return dict(loss=loss, counts=counts, rates=rates, rest=new_rest, grads=grads)


@pytest.fixture(scope="module")
def reference():
    """The default path's results, per (net, mode), computed once."""
    cache = {}

    def get(name, train_mode):
        if (name, train_mode) not in cache:
            cache[name, train_mode] = _run(_build(name, None, train_mode=train_mode), _input(name))
        return cache[name, train_mode]

    return get


@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", list(NETS))
def test_chunked_forward_matches_default_counts_loss_gradients_and_state(
    name, chunk, train_mode, reference
):
    ref = reference(name, train_mode)
    got = _run(_build(name, chunk, train_mode=train_mode), _input(name))
    # The nets fire (else equality would be vacuous), below saturation.
    assert 0 < float(jnp.mean(ref["counts"])) < T
    np.testing.assert_array_equal(np.asarray(got["counts"]), np.asarray(ref["counts"]))
    assert float(got["loss"]) == float(ref["loss"])
    assert set(got["rates"]) == {"sn0", "sn1", "sn2", "sn3"}
    for layer, rate in ref["rates"].items():
        assert float(got["rates"][layer]) == float(rate), layer

    ref_grads, got_grads = _flat(ref["grads"]), _flat(got["grads"])
    assert set(got_grads) == set(ref_grads)
    tau_keys = [k for k in ref_grads if k.endswith("neuron/w")]  # one PLIF w per layer
    assert len(tau_keys) == 4
    for key, g in ref_grads.items():
        np.testing.assert_allclose(got_grads[key], g, rtol=1e-6, atol=1e-12, err_msg=key)
    # The gradients are not all zero (dead nets would compare equal trivially).
    assert all(np.any(ref_grads[k] != 0) for k in tau_keys)

    ref_rest, got_rest = _flat(ref["rest"]), _flat(got["rest"])
    assert set(got_rest) == set(ref_rest)
    for key, v in ref_rest.items():  # BN running statistics, dropout stream counts
        np.testing.assert_allclose(got_rest[key], v, rtol=1e-6, atol=1e-12, err_msg=key)
    # The dropout streams advanced the same way (keys and counts are equal, not close).
    for a, b in zip(_leaves(ref["rest"]), _leaves(got["rest"]), strict=True):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(NETS))
def test_chunked_running_statistics_move_in_training_and_stay_in_eval(name, reference):
    before = _flat(nnx.state(_build(name, None, train_mode=True), nnx.BatchStat))
    got = _run(_build(name, 2, train_mode=True), _input(name))
    after = {k: v for k, v in _flat(got["rest"]).items() if "bn/" in k}
    assert set(after) == set(before)
    assert all(np.all(np.abs(after[k] - before[k]) > 1e-4) for k in before)
    got_eval = _run(_build(name, 2, train_mode=False), _input(name))
    for key, v in before.items():
        np.testing.assert_array_equal(_flat(got_eval["rest"])[key], v)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", list(NETS))
def test_every_neuron_spikes_equal_default_path_in_training_with_dropout(name, chunk):
    x = _input(name)
    outs = {}
    for label, c in (("default", None), ("remat", chunk)):
        model = _build(name, c, train_mode=True)
        assert (
            model.named_layers()["dropout0"].rate == 0.5
            and not model.named_layers()["dropout0"].deterministic
        )
        graphdef, state = nnx.split(model)
        outs[label] = _traces_fn(graphdef)(state, x)
    (c_ref, tr_ref, st_ref), (c_got, tr_got, st_got) = outs["default"], outs["remat"]
    np.testing.assert_array_equal(np.asarray(c_got), np.asarray(c_ref))
    assert list(tr_got) == list(tr_ref) == ["sn0", "sn1", "sn2", "sn3"]
    for layer, ref in tr_ref.items():
        got = tr_got[layer]
        assert got.spikes.shape == ref.spikes.shape and got.spikes.shape[0] == T
        np.testing.assert_array_equal(np.asarray(got.spikes), np.asarray(ref.spikes), layer)
        for field in ("current", "h", "v"):
            np.testing.assert_allclose(
                np.asarray(getattr(got, field)),
                np.asarray(getattr(ref, field)),
                rtol=1e-9,
                atol=1e-12,
                err_msg=f"{layer}.{field}",
            )
    for a, b in zip(_leaves(st_ref), _leaves(st_got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9)


@pytest.mark.parametrize("name", list(NETS))
def test_dropout_masks_are_those_of_the_default_path_not_just_any(name):
    """A different dropout seed changes the FC currents: the equality above is about masks."""
    x = _input(name)
    currents = []
    for chunk, seed in ((None, 1), (2, 1), (2, 9)):
        graphdef, state = nnx.split(_build(name, chunk, train_mode=True, dropout_seed=seed))
        _, traces, _ = _traces_fn(graphdef)(state, x)
        currents.append(np.asarray(traces["sn2"].current))
    np.testing.assert_allclose(currents[1], currents[0], rtol=1e-9, atol=1e-12)
    assert np.max(np.abs(currents[2] - currents[0])) > 1e-3


def test_train_step_with_remat_compiles_and_matches_default():
    name = "nmnist"
    x = _input(name)
    batch = {"x": x, "y": jnp.arange(BATCH) % NUM_CLASSES, "mask": jnp.ones((BATCH,))}
    tx = optax.scale_by_adam()
    results = []
    for chunk in (None, 2):
        model = _build(name, chunk, train_mode=True)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        state = train.TrainState(params, rest, tx.init(params))
        step = jax.jit(
            functools.partial(
                train.train_step,
                graphdef=graphdef,
                tx=tx,
                preprocess=lambda x, *, train, rng: x,
                base_key=jax.random.key(0),
                num_classes=NUM_CLASSES,
                time_steps=T,
            )
        )
        results.append(step(state, batch, jnp.float64(1e-3), jnp.int32(0), jnp.int32(0)))
    (ref_state, ref_m), (got_state, got_m) = results
    assert float(got_m["loss"]) == float(ref_m["loss"]) > 0
    assert int(got_m["correct"]) == int(ref_m["correct"])
    assert bool(got_m["finite"])
    assert set(got_m["firing_rate"]) == set(ref_m["firing_rate"]) == {"sn0", "sn1", "sn2", "sn3"}
    for layer, rate in ref_m["firing_rate"].items():
        assert float(got_m["firing_rate"][layer]) == float(rate)
    ref_p, got_p = _flat(ref_state.params), _flat(got_state.params)
    for key, p in ref_p.items():
        np.testing.assert_allclose(got_p[key], p, rtol=1e-6, atol=1e-9, err_msg=key)
    ref_r, got_r = _flat(ref_state.rest), _flat(got_state.rest)
    for key, r in ref_r.items():
        np.testing.assert_allclose(got_r[key], r, rtol=1e-6, err_msg=key)


def test_neuron_membrane_is_carried_across_chunks():
    """Input 1.8 at tau 2 charges to 0.9 (no spike), then 1.35 (spike), then resets: a spike
    every second step, which one-step chunks only reproduce if the membrane is carried."""
    neuron = neurons.LIF(2.0)
    x_seq = jnp.full((6, 1, 1), 1.8, jnp.float64)
    spikes_whole = neurons.lif_multistep(x_seq, neuron.decay())
    np.testing.assert_array_equal(np.asarray(spikes_whole).ravel(), [0, 1, 0, 1, 0, 1])
    v = jnp.zeros((1, 1), jnp.float64)
    chunked = []
    for t in range(6):
        s, v = neuron.dynamics(x_seq[t : t + 1], v_init=v, return_final=True)
        chunked.append(s)
    np.testing.assert_array_equal(np.concatenate(chunked), np.asarray(spikes_whole))


def test_remat_chunk_must_divide_T_and_names_the_divisors():
    with pytest.raises(ValueError, match=r"remat_chunk=3 does not divide .* T=4.*\[1, 2, 4\]"):
        models.create_model("mnist", rngs=nnx.Rngs(0), channels=4, hidden=16, T=4, remat_chunk=3)
    # Neuromorphic nets built for any T check at call time.
    model = models.create_model(
        "nmnist", rngs=nnx.Rngs(0), channels=4, input_size=16, hidden=16, remat_chunk=3
    )
    with pytest.raises(ValueError, match=r"remat_chunk=3 does not divide .* T=4"):
        model(jnp.zeros((4, 2, 2, 16, 16)))


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "2"])
def test_remat_chunk_rejects_non_positive_or_non_int(bad):
    with pytest.raises(ValueError, match="remat_chunk must be a positive int"):
        models.resolve("nmnist", remat_chunk=bad)


def test_remat_chunk_with_folded_batchnorm_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"needs bn_mode='per_step'.*remat_chunk=None"):
        models.resolve("dvsgesture", bn_mode="folded", remat_chunk=2)


def test_remat_chunk_none_is_the_default_and_keeps_the_plain_forward():
    assert models.resolve("dvsgesture").remat_chunk is None
    assert models.resolve("dvsgesture", remat_chunk=5).remat_chunk == 5
    assert "remat_chunk" in models.OPTIONS


def test_in_scan_view_flag_marks_the_scanned_convolutions_only():
    # The loop-friendly convolution is a ConvBN view flag: remat nets build the convolutions of
    # their scanned body with it, never the static encoder (which runs once, outside the scan).
    def flags(model):
        convs = [b.synapse for b in model.features if b.synapse is not None]
        return model.encoder.in_scan, [c.in_scan for c in convs]

    options = NETS["mnist"][0]
    make = lambda chunk: nnx.eval_shape(
        lambda: models.create_model("mnist", rngs=nnx.Rngs(0), remat_chunk=chunk, **options)
    )
    plain = make(None)
    assert flags(make(2)) == (False, [True]) and flags(plain) == (False, [False])
    assert flags(nnx.view(plain, in_scan=True)) == (True, [True]) and flags(plain)[1] == [False]


def test_loop_friendly_conv_matches_module_forward_and_autodiff_gradients():
    conv = layers.conv3x3(3, 5, rngs=nnx.Rngs(0), dtype=jnp.float64, param_dtype=jnp.float64)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)))
    coef = jnp.asarray(rng.normal(size=(2, 7, 6, 5)))
    np.testing.assert_array_equal(
        np.asarray(xla_cpu.apply_conv3x3_in_loop(conv, x)), np.asarray(conv(x))
    )
    kernel = conv.kernel[...]
    ref = jax.grad(
        lambda x, k: jnp.sum(
            coef
            * jax.lax.conv_general_dilated(
                x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        ),
        argnums=(0, 1),
    )(x, kernel)
    got = jax.grad(
        lambda x, k: jnp.sum(coef * xla_cpu.conv3x3_loop_friendly(x, k)), argnums=(0, 1)
    )(x, kernel)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-12, atol=1e-12)


def test_loop_friendly_conv_refuses_other_convolutions():
    strided = nnx.Conv(2, 4, kernel_size=(3, 3), strides=(2, 2), use_bias=False, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="3x3, stride 1, padding 1, bias-free"):
        xla_cpu.apply_conv3x3_in_loop(strided, jnp.zeros((1, 8, 8, 2)))


def test_config_remat_chunk_reaches_the_model_from_the_command_line():
    config = load_config("dvsgesture", "--config.model.remat_chunk=5")
    assert load_config("dvsgesture").model.remat_chunk is None
    name, options = models.spec_from_config(config, dataset_info("dvsgesture", 20))
    assert options["remat_chunk"] == 5
    abstract = nnx.eval_shape(lambda: models.build_model(name, options, seed=0))
    assert abstract.config.remat_chunk == 5 and abstract.config.T == 20
    # The option adds no state: checkpoints of either setting hold the same tree.
    plain = nnx.eval_shape(
        lambda: models.build_model(name, {**options, "remat_chunk": None}, seed=0)
    )
    assert jax.tree.structure(nnx.state(abstract)) == jax.tree.structure(nnx.state(plain))
