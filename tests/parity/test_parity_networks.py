"""Parity of the six paper networks with a torch + SpikingJelly 2.0 build of the same architecture.

Each network is built at reduced width in SpikingJelly (``benchmarks.sj_reference``), given random
BatchNorm affine parameters / running statistics / PLIF ``w`` and scaled-up linear weights (so
that every layer spikes), and ported into plif_jax (``plif_jax.models.porting``). Both sides run in
float64 with the same input and the same dropout masks, in training and in eval mode, for both
BatchNorm modes (per-step = SpikingJelly single-step loop; folded = SpikingJelly multi-step).
Checked: every layer's spikes equal (exactly), the output counts, the running statistics after
the training step, and the gradient of the paper's loss for every parameter (``w`` included).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import sj_reference as sjr
from plif_jax import models
from plif_jax.models import porting
from tests.support.oracle import import_oracle

# float64 on both sides, XLA's optimisations off; restored afterwards.
pytestmark = [pytest.mark.parity, pytest.mark.usefixtures("float64")]

# The oracle is optional: without it this module skips (an error under PLIF_REQUIRE_ORACLE=1).
torch = import_oracle("torch")
import_oracle("spikingjelly.activation_based.neuron")  # what sj_reference builds the nets from

GRAD_RTOL = 1e-4
CONV_GAIN = 3.0

# name -> (reduced options, input shape, linear-weight gain, input scale)
CASES = {
    "mnist": (dict(channels=4, hidden=16, T=3), (3, 1, 28, 28), 5.0, 1.5),
    # Fashion-MNIST has MNIST's architecture: use it to cover the non-paper branches
    # (LIF with a fixed tau, average pooling), and N-MNIST for the sigmoid surrogate with a
    # non-default alpha and the non-detached reset. (LIF's fixed decay 1/tau is a float32
    # constant in plif_jax.neurons, so its gradients agree to ~2e-7 here, not ~1e-14.)
    "fashion_mnist": (
        dict(channels=4, hidden=16, T=3, neuron="lif", init_tau=3.0, pooling="avg"),
        (3, 1, 28, 28),
        20.0,
        1.5,
    ),
    "cifar10": (dict(channels=4, hidden=16, T=3), (2, 3, 32, 32), 5.0, 1.5),
    "nmnist": (
        dict(
            channels=4,
            input_size=16,
            hidden=16,
            surrogate="sigmoid",
            surrogate_alpha=3.0,
            detach_reset=False,
        ),
        (3, 3, 2, 16, 16),
        5.0,
        1.0,
    ),
    "cifar10dvs": (dict(channels=4, input_size=32, hidden=16), (3, 2, 2, 32, 32), 5.0, 1.0),
    "dvsgesture": (dict(channels=8, input_size=32, hidden=16), (3, 2, 2, 32, 32), 12.0, 1.0),
}
BN_TO_STEP = {"per_step": "s", "folded": "m"}


def _randomise(net, seed: int, gain: float) -> None:
    """Non-trivial BN parameters/statistics and tau; linear weights scaled so FC layers spike."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen, dtype=t.dtype))

    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                uniform(module.weight, 0.8, 1.6)
                uniform(module.bias, 0.0, 0.5)
                uniform(module.running_mean, -0.3, 0.3)
                uniform(module.running_var, 0.2, 0.6)
            elif isinstance(module, torch.nn.Linear):
                module.weight.mul_(gain)
            elif isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(CONV_GAIN)  # matters in eval only (BN rescales in training)
            elif hasattr(module, "w") and isinstance(module.w, torch.nn.Parameter):
                uniform(module.w, -1.0, 0.7)  # tau in (1.5, 3.7)


def _to_f64(model) -> None:
    state = nnx.state(model)
    nnx.update(
        model,
        jax.tree.map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state
        ),
    )


def _flat(state) -> dict:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
    }


def _loss(counts, labels, T, num_classes):
    """The paper's loss: MSE between the firing rate and the one-hot label."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=counts.dtype)
    return jnp.mean(jnp.square(counts / T - onehot))


@nnx.jit(static_argnames=("T", "num_classes"))
def _jax_step(model, x, labels, T, num_classes):
    """Forward + gradient, compiled once per network/mode (eager dispatch compiles per op)."""

    def loss_fn(m):
        counts, traces = models.run_with_traces(m, x)
        counts = counts.astype(jnp.float64)
        return _loss(counts, labels, T, num_classes), (counts, traces)

    (loss, (counts, traces)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return loss, counts, traces, grads


def _torch_step(net, x, labels, T, num_classes, masks):
    for p in net.parameters():
        p.grad = None
    counts, spikes = sjr.sj_forward(net, x, dropout_masks=masks, record=True)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels), num_classes).double()
    loss = torch.nn.functional.mse_loss(counts / T, onehot)
    loss.backward()
    return loss.detach(), counts, spikes


def _torch_nhwc(spikes: torch.Tensor) -> np.ndarray:
    s = spikes.detach().numpy()
    return s.transpose(0, 1, 3, 4, 2) if s.ndim == 5 else s


def _compare(model, net, template, x_np, labels, T, masks, tag):
    """One step on both sides; returns the max relative gradient error."""
    num_classes = model.num_classes
    loss_j, counts_j, traces, grads = _jax_step(
        model, jnp.asarray(x_np), jnp.asarray(labels), T=T, num_classes=num_classes
    )
    loss_t, counts_t, spikes_t = _torch_step(
        net, torch.as_tensor(x_np), labels, T, num_classes, masks
    )

    # Every spiking layer: identical spikes, and neither silent nor saturated.
    assert len(traces) == len(spikes_t)
    for (name, trace), s_t in zip(traces.items(), spikes_t, strict=True):
        s_j = np.asarray(trace.spikes)
        np.testing.assert_array_equal(s_j, _torch_nhwc(s_t), err_msg=f"{tag} {name}")
        rate = s_j.mean()
        assert 0.0 < rate < 1.0, f"{tag} {name}: firing rate {rate} proves nothing"
    np.testing.assert_allclose(np.asarray(counts_j), counts_t.detach().numpy(), atol=1e-12)
    assert float(np.asarray(counts_j).sum()) > 0.0
    np.testing.assert_allclose(float(loss_j), loss_t.item(), rtol=1e-12)

    # Torch gradients and running statistics, converted to plif_jax layout by the porting code.
    ref_sd = {k: v.detach().clone().numpy() for k, v in net.state_dict().items()}
    for k, p in net.named_parameters():
        ref_sd[k] = p.grad.detach().clone().numpy()
    ref = nnx.clone(template)
    porting.load_torch_state_dict(ref, ref_sd)
    want_grads = _flat(nnx.state(ref, nnx.Param))
    got_grads = _flat(grads)
    assert set(want_grads) == set(got_grads)
    worst = 0.0
    for key, want in want_grads.items():
        scale = np.abs(want).max()
        assert scale > 0.0, f"{tag} {key}: zero gradient proves nothing"
        err = np.abs(got_grads[key] - want).max() / scale
        assert err <= GRAD_RTOL, f"{tag} {key}: relative gradient error {err:.3g}"
        worst = max(worst, err)
    want_stats = _flat(nnx.state(ref, nnx.BatchStat))
    got_stats = _flat(nnx.state(model, nnx.BatchStat))
    for key, want in want_stats.items():
        np.testing.assert_allclose(got_stats[key], want, rtol=1e-10, atol=1e-12, err_msg=key)
    return worst


@pytest.mark.parametrize("bn_mode", list(BN_TO_STEP))
@pytest.mark.parametrize("name", list(CASES))
def test_network_matches_spikingjelly_in_train_and_eval(name, bn_mode):
    options, shape, gain, scale = CASES[name]
    torch.manual_seed(0)
    net = sjr.build_sj_model(name, step_mode=BN_TO_STEP[bn_mode], **options).double()
    _randomise(net, seed=1, gain=gain)
    state_dict = {k: v.detach().clone().numpy() for k, v in net.state_dict().items()}

    model = models.create_model(
        name, rngs=nnx.Rngs(0), bn_mode=bn_mode, dtype=jnp.float64, **options
    )
    _to_f64(model)
    porting.load_torch_state_dict(model, state_dict)
    template = nnx.clone(model)

    rng = np.random.default_rng(2)
    if name in models.STATIC_NETS:
        x_np = scale * rng.standard_normal(shape)
        T, batch = options["T"], shape[0]
    else:
        x_np = rng.poisson(scale, shape).astype(np.float64)
        T, batch = shape[0], shape[1]
    labels = rng.integers(0, model.num_classes, batch)

    # The same dropout masks on both sides: draw them from a clone of the model's streams (the
    # model then draws the identical masks), and reorder the first one's features from the NHWC
    # flatten order to torch's CHW order.
    clone = nnx.clone(model)
    c, hw = (
        model.config.channels,
        model.named_layers()["fc0"].kernel.shape[0] // model.config.channels,
    )
    side = int(round(hw**0.5))
    masks = []
    layers, clone_layers = model.named_layers(), clone.named_layers()
    for i, (attr, feats) in enumerate(
        (a, layers[f"fc{k}"].kernel.shape[0])
        for k, a in enumerate(("dropout0", "dropout1"))
        if a in layers
    ):
        m = np.asarray(clone_layers[attr].make_mask(batch, feats, jnp.float64))
        if i == 0:
            m = m.reshape(batch, side, side, c).transpose(0, 3, 1, 2).reshape(batch, feats)
        assert 0.0 < (m == 0).mean() < 1.0
        masks.append(torch.tensor(m))  # a copy: torch wants a writable buffer

    worst_train = _compare(model, net, template, x_np, labels, T, masks, f"{name}/{bn_mode}/train")
    model.eval()
    net.eval()
    template.eval()
    worst_eval = _compare(model, net, template, x_np, labels, T, None, f"{name}/{bn_mode}/eval")
    print(
        f"parity {name:13s} {bn_mode:8s}: spikes equal; max rel grad err train "
        f"{worst_train:.2e} eval {worst_eval:.2e}"
    )
