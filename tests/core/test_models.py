"""The six paper networks: sizes, shapes, options, train/eval, traces, bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plif_jax import layers, models, neurons
from plif_jax.models import porting
from tests.support.paper import PAPER_NUM_SPIKING, PAPER_PARAM_COUNTS

# Reduced nets used for shape/behaviour tests: (name, options, input shape).
SMALL = {
    "mnist": (dict(channels=4, hidden=16, T=3), (2, 1, 28, 28)),
    "cifar10": (dict(channels=4, hidden=16, T=2), (2, 3, 32, 32)),
    # bf16 compute: spikes stay exact 0/1, parameters and BN statistics stay float32.
    "nmnist": (dict(channels=4, input_size=8, dtype=jnp.bfloat16), (3, 2, 2, 8, 8)),
    "dvsgesture": (dict(channels=4, input_size=32), (2, 2, 2, 32, 32)),
}


# XLA compile time dominates these tiny nets; unoptimised code computes the same values.


@nnx.jit
def _forward(model, x):
    """Forward with traces, compiled (eager dispatch compiles every op separately)."""
    return models.run_with_traces(model, x)


def _abstract(name, **options):
    return nnx.eval_shape(lambda: models.create_model(name, rngs=nnx.Rngs(0), **options))


@pytest.mark.parametrize("name", list(PAPER_PARAM_COUNTS))
def test_parameter_count_at_paper_size_matches_reference(name):
    model = _abstract(name)
    assert models.count_params(model) == PAPER_PARAM_COUNTS[name]
    taus = jax.tree.leaves(nnx.state(model, neurons.TauParam))
    assert len(taus) == PAPER_NUM_SPIKING[name]
    assert [n for n, _ in model.spiking_layers()] == [
        f"sn{i}" for i in range(PAPER_NUM_SPIKING[name])
    ]


def test_paper_layer_shapes_follow_the_reference_architecture():
    mnist = _abstract("mnist")
    assert mnist.named_layers()["conv0"].kernel.shape == (3, 3, 1, 128)
    assert mnist.named_layers()["fc0"].kernel.shape == (6272, 2048)
    assert mnist.named_layers()["fc1"].kernel.shape == (2048, 100)
    cifar = _abstract("cifar10")
    assert cifar.named_layers()["conv5"].kernel.shape == (3, 3, 256, 256)
    assert cifar.named_layers()["fc0"].kernel.shape == (16384, 2048)
    assert not hasattr(cifar, "dropout1")  # CIFAR-10 has a single dropout
    dvs = _abstract("cifar10dvs")
    assert dvs.named_layers()["fc0"].kernel.shape == (8192, 2048)  # not newer SpikingJelly's 512
    gesture = _abstract("dvsgesture")
    assert gesture.named_layers()["fc0"].kernel.shape == (2048, 512)
    assert gesture.named_layers()["fc1"].kernel.shape == (512, 110)
    nmnist = _abstract("nmnist")
    assert nmnist.named_layers()["fc0"].kernel.shape == (8192, 2048)


def test_lif_has_no_tau_parameter_and_learnable_alpha_adds_one_per_layer():
    lif = _abstract("nmnist", neuron="lif")
    assert models.count_params(lif) == PAPER_PARAM_COUNTS["nmnist"] - 4
    alpha = _abstract("nmnist", alpha_learnable=True)
    assert models.count_params(alpha) == PAPER_PARAM_COUNTS["nmnist"] + 4
    assert len(jax.tree.leaves(nnx.state(alpha, neurons.SurrogateAlpha))) == 4


def test_init_tau_sets_w_and_defaults_match_paper():
    model = models.create_model(
        "dvsgesture", rngs=nnx.Rngs(0), init_tau=16.0, channels=4, input_size=32
    )
    for _, neuron in model.spiking_layers():
        np.testing.assert_allclose(float(neuron.w[...]), -np.log(15.0), rtol=1e-6)
    cfg = models.resolve("mnist")
    assert (cfg.T, cfg.pooling, cfg.bn_mode, cfg.dropout, cfg.hidden) == (
        8,
        "max",
        "per_step",
        0.5,
        2048,
    )
    assert (cfg.init_tau, cfg.detach_reset, cfg.surrogate) == (2.0, True, "atan")
    assert models.resolve("dvsgesture").num_classes == 11


def test_conv_and_linear_init_is_pytorch_uniform_bound():
    model = models.create_model("mnist", rngs=nnx.Rngs(0), channels=64, hidden=512, T=1)
    k = np.asarray(model.named_layers()["conv1"].kernel[...])
    bound = 1.0 / np.sqrt(64 * 9)
    assert np.abs(k).max() <= bound
    assert np.abs(k).max() > 0.95 * bound
    # Uniform on [-b, b] has std b/sqrt(3).
    np.testing.assert_allclose(k.std(), bound / np.sqrt(3), rtol=0.05)
    w = np.asarray(model.named_layers()["fc1"].kernel[...])
    assert np.abs(w).max() <= 1.0 / np.sqrt(512)


@pytest.mark.parametrize("name", list(SMALL))
def test_output_is_count_per_class_in_range(name):
    options, shape = SMALL[name]
    model = models.create_model(name, rngs=nnx.Rngs(0), **options)
    x = 3.0 * jax.random.normal(jax.random.key(1), shape)
    counts, traces = _forward(model, x)
    t = options.get("T", shape[0])
    batch = shape[0] if name in models.STATIC_NETS else shape[1]
    classes = 11 if name == "dvsgesture" else 10
    assert counts.shape == (batch, classes)
    assert counts.dtype == jnp.float32
    assert float(counts.min()) >= 0.0 and float(counts.max()) <= t
    assert list(traces) == [n for n, _ in model.spiking_layers()]
    last = traces[list(traces)[-1]].spikes  # [T, B, classes * 10]
    np.testing.assert_array_equal(
        np.asarray(counts),
        np.asarray(last).reshape(t, batch, classes, 10).mean(-1).sum(0),
    )
    for trace in traces.values():
        assert trace.current.shape == trace.spikes.shape == trace.h.shape == trace.v.shape
        assert trace.spikes.shape[:2] == (t, batch)
        assert set(np.unique(np.asarray(trace.spikes))) <= {0.0, 1.0}
        # S = 1[h >= 1] exactly (v_threshold 1).
        np.testing.assert_array_equal(
            np.asarray(trace.spikes), (np.asarray(trace.h) >= 1.0).astype(np.float32)
        )
    if options.get("dtype") == jnp.bfloat16:
        assert traces["sn0"].spikes.dtype == jnp.bfloat16
        assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
            jnp.dtype(jnp.float32)
        }
        assert model.named_layers()["bn0"].mean[...].dtype == jnp.float32
    # The first layer really spikes at this input scale, so the check above is not vacuous.
    assert float(jnp.mean(traces["sn0"].spikes)) > 0.01


def test_static_net_feeds_the_same_encoder_output_at_every_step():
    options, shape = SMALL["mnist"]
    model = models.create_model("mnist", rngs=nnx.Rngs(0), **options)
    x = jax.random.normal(jax.random.key(2), shape)
    _, traces = _forward(model, x)
    cur = np.asarray(traces["sn0"].current)
    for t in range(1, cur.shape[0]):
        np.testing.assert_array_equal(cur[t], cur[0])


def test_static_encoder_bn_updates_once_and_inner_bn_updates_T_times():
    model = models.create_model("mnist", rngs=nnx.Rngs(0), channels=4, hidden=16, T=3)
    x = jax.random.normal(jax.random.key(3), (4, 1, 28, 28))
    _forward(model, x)
    # Encoder output statistics, computed by hand from the conv output.
    z = np.asarray(model.named_layers()["conv0"](jnp.moveaxis(x, 1, -1)))
    n = z.shape[0] * z.shape[1] * z.shape[2]
    np.testing.assert_allclose(
        np.asarray(model.named_layers()["bn0"].mean[...]),
        0.1 * z.mean(axis=(0, 1, 2)),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(model.named_layers()["bn0"].var[...]),
        0.9 + 0.1 * z.var(axis=(0, 1, 2)) * n / (n - 1),
        rtol=1e-4,
    )


def test_nhwc_input_layout_gives_the_same_counts_as_nchw():
    x = 3.0 * jax.random.normal(jax.random.key(4), (2, 1, 28, 28))
    a = models.create_model("mnist", rngs=nnx.Rngs(5), channels=4, hidden=16, T=2)
    b = models.create_model(
        "mnist", rngs=nnx.Rngs(5), channels=4, hidden=16, T=2, input_layout="NHWC"
    )
    _, ta = _forward(a, x)
    _, tb = _forward(b, jnp.moveaxis(x, 1, -1))
    for name in ta:
        np.testing.assert_array_equal(np.asarray(ta[name].spikes), np.asarray(tb[name].spikes))


def test_train_eval_switch_reaches_batchnorm_and_dropout():
    model = models.create_model("nmnist", rngs=nnx.Rngs(0), channels=4, input_size=8)
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, layers.BatchNorm)]
    dos = [m for _, m in nnx.iter_modules(model) if isinstance(m, layers.TimeSharedDropout)]
    assert len(bns) == 2 and len(dos) == 2
    assert not any(m.use_running_average for m in bns) and not any(m.deterministic for m in dos)
    model.eval()
    assert all(m.use_running_average for m in bns) and all(m.deterministic for m in dos)
    x = 3.0 * jax.random.normal(jax.random.key(1), (2, 2, 2, 8, 8))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    (y1, _), (y2, _) = _forward(model, x), _forward(model, x)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))  # eval is deterministic
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, after)  # eval leaves running stats alone
    model.train()
    assert not any(m.use_running_average for m in bns) and not any(m.deterministic for m in dos)
    view = nnx.view(model, deterministic=True, use_running_average=True)
    assert all(m.use_running_average for m in nnx_modules(view, layers.BatchNorm))


def nnx_modules(model, cls):
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, cls)]


def test_bn_modes_give_different_statistics_on_the_same_input():
    x = 3.0 * jax.random.normal(jax.random.key(7), (3, 2, 2, 8, 8))
    stats = {}
    for mode in layers.BN_MODES:
        model = models.create_model(
            "nmnist", rngs=nnx.Rngs(0), channels=4, input_size=8, bn_mode=mode
        )
        _forward(model, x)
        stats[mode] = np.asarray(model.named_layers()["bn0"].mean[...])
    assert model.named_layers()["bn0"].mode == "folded"
    assert not np.allclose(stats["per_step"], stats["folded"])


def test_dropout_rng_stream_is_part_of_the_model_state():
    model = models.create_model("nmnist", rngs=nnx.Rngs(0), channels=4, input_size=8)
    rng_state = nnx.state(model, nnx.RngState)
    paths = jax.tree_util.tree_flatten_with_path(rng_state)[0]
    owners = {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in p[:3]) for p, _ in paths}
    assert owners == {("classifier", "0", "dropout"), ("classifier", "1", "dropout")}


BAD_OPTIONS = [
    ("resnet", {}, "unknown model 'resnet'; valid names"),
    ("mnist", {"chanels": 4}, "unknown option(s) ['chanels']"),
    ("mnist", {"T": 0}, "T must be a positive int"),
    ("nmnist", {"T": -1}, "T must be a positive int"),
    ("mnist", {"pooling": "min"}, "Unknown pooling 'min'"),
    ("mnist", {"neuron": "izhikevich"}, "Unknown neuron 'izhikevich'"),
    ("mnist", {"bn_mode": "batch"}, "Unknown bn_mode 'batch'"),
    ("mnist", {"surrogate": "relu"}, "Unknown surrogate 'relu'"),
    ("mnist", {"input_layout": "CHW"}, "Unknown input_layout 'CHW'"),
    ("mnist", {"dropout": 1.0}, "dropout must be in [0, 1)"),
    ("mnist", {"init_tau": 1.0}, "init_tau must be > 1"),
    ("mnist", {"number_layer": 3}, "number_layer applies to the neuromorphic nets"),
    ("nmnist", {"number_layer": 0}, "number_layer must be a positive int"),
    ("nmnist", {"input_size": 3}, "too small for 2 2x2 poolings"),
    ("nmnist", {"channels": 2.5}, "channels must be a positive int"),
    ("mnist", {"surrogate_alpha": -1.0}, "surrogate_alpha (surrogate sharpness) must be > 0"),
]


@pytest.mark.parametrize("name,options,message", BAD_OPTIONS)
def test_bad_option_raises_a_clear_error(name, options, message):
    with pytest.raises(ValueError) as err:
        models.resolve(name, **options)
    assert message in str(err.value)


def test_bad_input_raises_a_clear_error_at_call_time():
    static = models.create_model("mnist", rngs=nnx.Rngs(0), channels=4, hidden=16, T=2)
    with pytest.raises(ValueError, match=r"expects input \[B, C, H, W\]"):
        static(jnp.zeros((1, 28, 28)))
    with pytest.raises(ValueError, match="expects 1 input channels"):
        static(jnp.zeros((2, 3, 28, 28)))
    with pytest.raises(ValueError, match="input_size=32"):
        static(jnp.zeros((2, 1, 32, 32)))
    events = models.create_model("nmnist", rngs=nnx.Rngs(0), channels=4, input_size=8, T=3)
    with pytest.raises(ValueError, match=r"expects input \[T, B, C, H, W\]"):
        events(jnp.zeros((2, 2, 8, 8)))
    with pytest.raises(ValueError, match="built for T=3"):
        events(jnp.zeros((4, 2, 2, 8, 8)))
    with pytest.raises(ValueError, match="expects 2 input channels"):
        events(jnp.zeros((3, 2, 1, 8, 8)))


# --- porting: torch (codes/models.py) names and layouts -> plif_jax ---------------------------


def test_torch_names_follow_the_original_sequential_indices():
    mnist = _abstract("mnist")
    assert porting.torch_layer_names(mnist) == {
        "conv0": "static_conv.0",
        "bn0": "static_conv.1",
        "sn0": "conv.0",
        "conv1": "conv.2",
        "bn1": "conv.3",
        "sn1": "conv.4",
        "fc0": "fc.2",
        "sn2": "fc.3",
        "fc1": "fc.5",
        "sn3": "fc.6",
    }
    cifar = porting.torch_layer_names(_abstract("cifar10"))
    assert (cifar["sn0"], cifar["conv1"], cifar["bn2"], cifar["sn3"]) == (
        "conv.0",
        "conv.1",
        "conv.5",
        "conv.10",  # after the pool at conv.7
    )
    assert (cifar["conv3"], cifar["sn5"], cifar["fc0"], cifar["sn6"], cifar["fc1"]) == (
        "conv.8",
        "conv.16",
        "fc.2",
        "fc.3",
        "fc.4",  # CIFAR-10 has no second dropout
    )
    gesture = porting.torch_layer_names(_abstract("dvsgesture"))
    assert [gesture[f"conv{k}"] for k in range(5)] == [f"conv.{4 * k}" for k in range(5)]
    assert [gesture[f"sn{k}"] for k in range(5)] == [f"conv.{4 * k + 2}" for k in range(5)]
    assert (gesture["fc0"], gesture["sn5"], gesture["fc1"], gesture["sn6"]) == (
        "fc.2",
        "fc.3",
        "fc.5",
        "fc.6",
    )


def _torch_layout_state_dict(model, seed=0):
    """Random arrays in torch shapes/names for `model` (what a torch state_dict holds)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for attr, prefix in porting.torch_layer_names(model).items():
        module = model.named_layers()[attr]
        if attr.startswith("conv"):
            kh, kw, i, o = module.kernel.shape
            sd[f"{prefix}.weight"] = rng.standard_normal((o, i, kh, kw)).astype(np.float32)
        elif attr.startswith("fc"):
            i, o = module.kernel.shape
            sd[f"{prefix}.weight"] = rng.standard_normal((o, i)).astype(np.float32)
        elif attr.startswith("bn"):
            c = module.num_features
            for key in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{prefix}.{key}"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            sd[f"{prefix}.num_batches_tracked"] = np.array(3)
        else:
            sd[f"{prefix}.w"] = np.array(rng.uniform(-1, 1), np.float32)
    return sd


def test_load_torch_state_dict_converts_layouts_and_permutes_the_first_fc():
    model = models.create_model("nmnist", rngs=nnx.Rngs(0), channels=3, input_size=16, hidden=8)
    sd = _torch_layout_state_dict(model)
    porting.load_torch_state_dict(model, sd)
    np.testing.assert_array_equal(
        np.asarray(model.named_layers()["conv1"].kernel[...]),
        sd["conv.4.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        np.asarray(model.named_layers()["fc1"].kernel[...]), sd["fc.5.weight"].T
    )
    np.testing.assert_array_equal(
        np.asarray(model.named_layers()["bn1"].var[...]), sd["conv.5.running_var"]
    )
    np.testing.assert_array_equal(
        np.asarray(model.named_layers()["bn0"].scale[...]), sd["conv.1.weight"]
    )
    np.testing.assert_array_equal(np.asarray(model.named_layers()["sn2"].w[...]), sd["fc.3.w"])
    # The first FC sees an NHWC-flattened map here and a CHW-flattened one in torch.
    fmap = np.random.default_rng(1).standard_normal((4, 4, 3)).astype(np.float32)  # H, W, C
    ours = fmap.reshape(-1) @ np.asarray(model.named_layers()["fc0"].kernel[...])
    theirs = sd["fc.2.weight"] @ fmap.transpose(2, 0, 1).reshape(-1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_load_torch_state_dict_rejects_missing_mismatched_and_unexpected_keys():
    model = models.create_model("nmnist", rngs=nnx.Rngs(0), channels=3, input_size=16, hidden=8)
    sd = _torch_layout_state_dict(model)
    missing = {k: v for k, v in sd.items() if k != "conv.6.w"}
    with pytest.raises(KeyError, match=r"no key 'conv.6.w', needed for sn1.w"):
        porting.load_torch_state_dict(model, missing)
    wrong = dict(sd, **{"fc.2.weight": np.zeros((8, 47), np.float32)})
    with pytest.raises(ValueError, match=r"shape mismatch: torch 'fc.2.weight'.*fc0.kernel"):
        porting.load_torch_state_dict(model, wrong)
    extra = dict(sd, **{"fc.2.bias": np.zeros(8, np.float32)})
    with pytest.raises(KeyError, match=r"unexpected state_dict keys .*'fc.2.bias'"):
        porting.load_torch_state_dict(model, extra)
    porting.load_torch_state_dict(model, extra, strict=False)
    np.testing.assert_array_equal(
        np.asarray(model.named_layers()["fc0"].kernel[...]).shape, (48, 8)
    )


def test_bfloat16_gradients_with_remat_chunk():
    # Inside jax.checkpoint (remat_chunk) a constant surrogate alpha reaches the neuron's backward
    # as a NumPy-backed literal; NumPy's promotion made (pi / 2) * alpha float32 for a bfloat16
    # alpha, the gradient float32, and the backward loop's in-place update failed to trace.
    model = models.create_model(
        "nmnist", rngs=nnx.Rngs(0), channels=4, number_layer=1, input_size=8, T=4,
        dropout=0.0, remat_chunk=2, dtype=jnp.bfloat16,
    )  # fmt: skip
    x = jnp.asarray(np.random.default_rng(0).poisson(0.5, (4, 2, 2, 8, 8)), jnp.bfloat16)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x).astype(jnp.float32))

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
