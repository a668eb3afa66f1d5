"""The speed work: the fast neuron scan's numerics, and a smoke run of the benchmark harness.

The harness test runs every suite at toy sizes and checks the JSON's structure and internal
consistency (ratios, samples/s, FLOP counts). It never asserts a timing.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import roofline
from plif_jax import neurons, surrogate

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning"
)


def _spike_loss_grads(fast: bool, x, w, alpha, coef, **kw):
    """Gradients of ``sum(coef * spikes)`` w.r.t. (x, w, alpha), fast path or autodiff path."""

    def loss(x, w, alpha):
        out = neurons.lif_multistep(
            x, jax.nn.sigmoid(w), alpha=alpha, return_membrane=not fast, **kw
        )
        spikes = out if fast else out[0]  # the membrane path differentiates lif_step per step
        return jnp.sum(coef * spikes), spikes

    return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(x, w, alpha)


@pytest.mark.parametrize("kind", ["atan", "sigmoid"])
@pytest.mark.parametrize("detach_reset", [True, False])
def test_fast_scan_matches_autodiff_through_lif_step_in_float64(kind, detach_reset):
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(0.8, 1.3, (7, 3, 5)))
        coef = jnp.asarray(rng.normal(size=(7, 3, 5)))
        w, alpha = jnp.float64(0.4), jnp.float64(1.7)
        kw = dict(surrogate=surrogate.get(kind), detach_reset=detach_reset, v_reset=0.0)
        (gx, gw, ga), s_fast = _spike_loss_grads(True, x, w, alpha, coef, **kw)
        (rx, rw, ra), s_ref = _spike_loss_grads(False, x, w, alpha, coef, **kw)
        assert 0 < float(jnp.mean(s_ref)) < 1  # both branches of the reset are exercised
    np.testing.assert_array_equal(np.asarray(s_fast), np.asarray(s_ref))
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(float(gw), float(rw), rtol=1e-11)
    np.testing.assert_allclose(float(ga), float(ra), rtol=1e-11)


def test_fast_scan_spikes_equal_reference_with_nonzero_reset_in_float32():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(0.5, 2.0, (20, 4, 33)), jnp.float32)
    kw = dict(v_threshold=0.7, v_reset=-0.3, detach_reset=True)
    fast = neurons.lif_multistep(x, jnp.float32(0.37), **kw)
    ref, _ = neurons.lif_multistep(x, jnp.float32(0.37), return_membrane=True, **kw)
    assert fast.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(ref))
    coef = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    g_fast = jax.grad(lambda x: jnp.sum(coef * neurons.lif_multistep(x, 0.37, **kw)))(x)
    g_ref = jax.grad(
        lambda x: jnp.sum(coef * neurons.lif_multistep(x, 0.37, return_membrane=True, **kw)[0])
    )(x)
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_ref), rtol=1e-5, atol=1e-6)


def test_flop_count_of_conv_gradient_is_three_forward_convs():
    x = jnp.ones((2, 8, 8, 4))
    k = jnp.ones((3, 3, 4, 6))

    def loss(x, k):
        y = jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(y)

    forward = 2 * 2 * 8 * 8 * 6 * (4 * 9)
    assert roofline.count_flops(loss, x, k) == forward
    assert roofline.count_flops(jax.grad(loss, argnums=(0, 1)), x, k) == 3 * forward
    scanned = lambda a: jax.lax.scan(lambda c, m: (c, m @ m), 0.0, a)[1]
    assert roofline.count_flops(scanned, jnp.ones((5, 4, 4))) == 5 * 2 * 4**3


@pytest.mark.e2e  # the benchmark CLI end to end (the SpikingJelly side included)
def test_quick_benchmark_writes_consistent_json(tmp_path, capsys):
    from benchmarks import cli as benchmark
    from benchmarks import report

    out = tmp_path / "bench.json"
    benchmark.main(["--quick", "--networks", "nmnist", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["impl"] == "fast"
    assert set(result["environment"]) == {
        "XLA_FLAGS",
        "LD_PRELOAD",
        "malloc",
        "jax_backend_already_initialised",
    }
    assert "glibc" in result["environment"]["malloc"] or result["environment"]["LD_PRELOAD"]

    assert result["command"].startswith("python -m benchmarks --quick")
    assert result["machine"]["cpu_count"] >= 1
    assert result["versions"]["jax"] == jax.__version__
    sj = result["sj_skipped"] is None
    assert {"neuron", "networks", "roofline", "memory"} <= set(result)

    assert [r["workload"] for r in result["neuron"]] == ["PLIF", "Linear(32->n)+PLIF"]
    for row in result["neuron"]:
        assert row["jax"]["median_s"] > 0 and row["jax"]["compile_s"] > 0
        assert row["jax"]["min_s"] <= row["jax"]["median_s"] <= row["jax"]["max_s"]
        if sj:
            assert math.isclose(row["ratio"], row["sj"]["median_s"] / row["jax"]["median_s"])

    (net,) = result["networks"]
    assert (net["workload"], net["T"], net["batch"]) == ("nmnist", 2, 2)
    assert math.isclose(net["train_samples_per_s"]["jax"], 2 / net["jax"]["train"]["median_s"])
    # Train = forward + two backward convs/matmuls (the first conv needs no input gradient).
    assert net["jax"]["flops_infer"] < net["jax"]["flops_train"] < 3 * net["jax"]["flops_infer"]
    assert net["jax"]["train_memory"]["peak_mib"] > 0
    if sj:
        assert net["train_ratio"] > 0 and net["infer_ratio"] > 0
    peak = result["roofline"]
    assert peak["matmul"]["gflops_per_s"] > 0 and peak["conv_fwd_bwd"]["gflops_per_s"] > 0
    assert math.isclose(
        net["train_fraction_of_conv_peak"],
        net["train_gflops_per_s"] / peak["conv_fwd_bwd"]["gflops_per_s"],
    )

    growth = result["memory"]["growth"]
    assert {(g["T"], g["batch"]) for g in growth} == {(2, 2), (4, 2), (2, 4)}
    by_size = {(g["T"], g["batch"]): g["peak_mib"] for g in growth}
    assert by_size[(4, 2)] > by_size[(2, 2)] and by_size[(2, 4)] > by_size[(2, 2)]
    remat = result["memory"]["remat"]
    # The default, then every chunk length of REMAT_CHUNKS dividing the quick run's T=2.
    assert [(r["variant"], r["remat_chunk"]) for r in remat] == [
        ("default", None),
        ("remat_chunk=1", 1),
        ("remat_chunk=2", 2),
    ]
    for r in remat:
        assert (r["network"], r["T"], r["batch"]) == ("nmnist", 2, 2)
        assert r["peak_mib"] > 0 and r["temp_mib"] > 0 and r["train_median_s"] > 0
    for r in remat[1:]:
        assert math.isclose(r["peak_ratio"], r["peak_mib"] / remat[0]["peak_mib"])
        assert math.isclose(r["time_ratio"], r["train_median_s"] / remat[0]["train_median_s"])
    best = report.best_remat(remat)
    assert best in remat[1:]
    verdict = report.remat_verdict(remat)
    assert verdict.startswith(("met with remat_chunk=", "missed with remat_chunk="))
    assert f"remat_chunk={best['remat_chunk']}" in verdict
    probe = result["memory"]["remat_probe"]
    # Eight 16 MiB activations: the plain gradient keeps at least one per layer alive.
    assert probe["activation_mib"] == 16 and probe["temp_mib_plain"] >= 8 * 16
    assert probe["temp_mib_remat"] > 0

    capsys.readouterr()
    report.main([str(out)])
    tables = capsys.readouterr().out
    assert "| nmnist | 2 | 2 |" in tables and "% of conv fwd+bwd peak" in tables
    assert "| remat_chunk=2 | nmnist | 2 | 2 |" in tables
    target = "**Remat: peak memory <= 1/3 of default for <= 1.4x the time**"
    assert f"{target} (nmnist, T=2, B=2): {verdict}." in tables
    if sj:
        assert f"{net['train_ratio']:.2f}x" in tables


def _remat_row(chunk, peak_ratio, time_ratio):
    return dict(
        variant=f"remat_chunk={chunk}",
        remat_chunk=chunk,
        peak_mib=300.0 * peak_ratio,
        train_median_s=2.0 * time_ratio,
        peak_ratio=peak_ratio,
        time_ratio=time_ratio,
    )


def test_remat_verdict_picks_the_fastest_chunk_meeting_both_bounds_or_the_closest():
    from benchmarks import report

    default = dict(variant="default", remat_chunk=None, peak_mib=300.0, train_median_s=2.0)
    rows = [default, _remat_row(1, 0.30, 1.6), _remat_row(2, 0.25, 1.35), _remat_row(4, 0.3, 1.3)]
    assert report.best_remat(rows)["remat_chunk"] == 4
    verdict = report.remat_verdict(rows)
    assert verdict.startswith("met with remat_chunk=4: peak 90 MiB vs 300 MiB = 0.30x")
    assert verdict.endswith("chunks meeting both: [2, 4]")
    # None meets both: the closest (worst ratio-to-bound 1.08 for chunk 2, 1.14 for chunk 1).
    rows = [default, _remat_row(1, 0.38, 1.2), _remat_row(2, 0.25, 1.51)]
    assert report.best_remat(rows)["remat_chunk"] == 2
    verdict = report.remat_verdict(rows)
    assert verdict.startswith("missed with remat_chunk=2")
    assert verdict.endswith("over the bound in time by a factor 1.08")
    assert report.remat_verdict([default]) == "missed: no rematerialisation row measured"


def _reference_max_pool(x):
    from flax import nnx

    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


@pytest.mark.parametrize("shape", [(2, 17, 17, 3), (2, 3, 5, 7, 2)])
@pytest.mark.parametrize("binary", [True, False])
def test_fast_max_pool_matches_reduce_window_values_and_tie_gradients(shape, binary):
    from plif_jax import layers

    rng = np.random.default_rng(3)
    # 0/1 spikes put ties in most windows: the gradient must go to the first maximum.
    x = rng.random(shape) < 0.4 if binary else rng.normal(size=shape)
    x = jnp.asarray(x, jnp.float32)
    g = jnp.asarray(rng.normal(size=_reference_max_pool(x).shape), jnp.float32)
    np.testing.assert_array_equal(np.asarray(layers.pool2x2(x)), np.asarray(_reference_max_pool(x)))
    grad_fast = jax.grad(lambda x: jnp.sum(layers.pool2x2(x) * g))(x)
    grad_ref = jax.grad(lambda x: jnp.sum(_reference_max_pool(x) * g))(x)
    np.testing.assert_array_equal(np.asarray(grad_fast), np.asarray(grad_ref))


def test_conv_probe_times_k_convolutions_against_one_grouped_vmapped_convolution():
    from benchmarks import seeds

    probe = seeds.conv_probe(k=2, repeats=1, quick=True)
    assert probe["loop"]["feature_group_counts"] == [1]
    assert probe["vmap"]["feature_group_counts"] == [2]  # the members' kernels as groups
    assert probe["loop"]["timing"]["median_s"] > 0 and probe["vmap"]["timing"]["median_s"] > 0
    assert "vmap/loop" in seeds.format_probe(probe)
