"""BatchNorm's training-mode normalisation with a hand-written backward, for GPUs and TPUs.

:meth:`plif_jax.layers.BatchNorm.normalize` calls :func:`normalize`, which returns
``(y, mean, var)`` of ``y = (x - mean) * rsqrt(var + eps) * scale + bias`` with the batch
statistics over ``axes`` (biased variance). The formulation is chosen when the step is
lowered (:func:`plif_jax.ops.platform.by_platform`, as for :mod:`plif_jax.ops.lif_loop`'s loops):

* XLA:CPU: the plain JAX expression with a two-pass variance, differentiated by autodiff (the
  program the project's recorded outputs come from, unchanged);
* GPU and TPU: the statistics from one pass over ``x`` (shifted sums, :func:`stats_one_pass`:
  the two-pass variance read the first layer's 2.7 GB activations twice per step on the H200
  plan of DVS128 Gesture), under a ``custom_vjp`` whose backward is the textbook one,
  ``dx = scale * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))``: one pass reading ``dy`` and
  ``x`` for both sums (the scale's and the bias's gradients as well), one pass writing ``dx``.
  Autodiff of the expression re-reads the activations in several reductions and keeps
  ``x - mean`` beside ``x``: on the H200 plan of the DVS128 Gesture train step (float32, batch
  16) BatchNorm's backward reductions were ~32 of 68 GB per step
  (docs/explanation/performance.md, "GPU and TPU plan").

Equal up to float reassociation (tested on CPU, where both run:
``tests/core/test_lif_formulations.py``; the one-pass statistics within 1e-5 there).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from plif_jax.ops.platform import by_platform


def stat_dtype(x):
    """BatchNorm's arithmetic dtype for ``x`` (and its scale, bias and statistics): at least
    float32."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _pmean(x, axis_name):
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _psum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _stats(x, axes, keep, axis_name):
    mean = _pmean(jnp.mean(x, axis=axes), axis_name)  # two-pass variance
    var = _pmean(jnp.mean(jnp.square(x - mean.reshape(keep)), axis=axes), axis_name)
    return mean, var


def stats_one_pass(x, axes, keep, axis_name):
    """Mean and biased variance from one pass over ``x``: the sums of ``d`` and ``d**2`` for
    ``d = x - c``, shifted by one sample per channel ``c`` (its first element along ``axes``,
    averaged over the devices): a shift near the mean keeps ``E[d^2] - E[d]^2`` from cancelling
    (the textbook one-pass formula without a shift loses the variance when the mean is large
    against the spread). XLA:GPU reads ``x`` once for both sums (one multi-output reduction)."""
    first = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    shift = _pmean(jax.lax.stop_gradient(x[first]).reshape(keep), axis_name)
    d = x - shift
    s1 = _pmean(jnp.mean(d, axis=axes), axis_name)
    s2 = _pmean(jnp.mean(jnp.square(d), axis=axes), axis_name)
    mean = shift.reshape(s1.shape) + s1
    return mean, jnp.maximum(s2 - jnp.square(s1), 0.0)


def _plain(x, scale, bias, axes, keep, epsilon, axis_name=None, stats=_stats):
    mean, var = stats(x, axes, keep, axis_name)
    y = (x - mean.reshape(keep)) * (jax.lax.rsqrt(var + epsilon).reshape(keep) * scale) + bias
    return y, mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _textbook(x, scale, bias, axes, keep, epsilon, axis_name):
    return _plain(x, scale, bias, axes, keep, epsilon, axis_name, stats_one_pass)


def _textbook_fwd(x, scale, bias, axes, keep, epsilon, axis_name):
    y, mean, var = _plain(x, scale, bias, axes, keep, epsilon, axis_name, stats_one_pass)
    return (y, mean, var), (x, scale, mean, jax.lax.rsqrt(var + epsilon))


def _textbook_bwd(axes, keep, epsilon, axis_name, res, cotangents):
    del epsilon
    return textbook_backward(axes, keep, axis_name, res, cotangents)


def textbook_backward(axes, keep, axis_name, res, cotangents, dx=None, sums=None):
    """``(dx, dscale, dbias)`` of ``(y, mean, var)`` from ``res = (x, scale, mean, rstd)`` and
    their cotangents (also :mod:`plif_jax.ops.bn_lif`'s backward, after its neuron kernel).

    ``dx``: computes ``dL/dx`` from ``(x, gy)`` and the per-channel terms shaped ``keep``
    (:func:`input_gradient`'s signature); None: :func:`input_gradient`. ``sums``: this
    device's ``(sum(gy), sum(gy * xhat))`` over ``axes`` where the caller has them already."""
    x, scale, mean, rstd = res
    gy, g_mean, g_var = cotangents
    n = 1 if axis_name is None else jax.lax.axis_size(axis_name)
    for a in axes:
        n *= x.shape[a]
    if sums is None:
        xhat = (x - mean.reshape(keep)) * rstd.reshape(keep)
        sums = jnp.sum(gy, axis=axes), jnp.sum(gy * xhat, axis=axes)  # [T, C] per step, or [C]
    g_bias_full, g_xhat_dot = sums
    # Batch-parallel: dx needs the global batch's sums; the scale's and bias's gradients stay
    # this device's (the step sums the gradients).
    sum_bias, sum_xhat = _psum(g_bias_full, axis_name), _psum(g_xhat_dot, axis_name)
    # The statistics' own cotangents (zero when, as in the layer, they only feed the running
    # averages under stop_gradient): d mean / dx = 1/n, d var / dx = 2 (x - mean) / n.
    terms = (
        mean.reshape(keep),
        rstd.reshape(keep),
        (scale * rstd).reshape(keep),
        (sum_bias / n).reshape(keep),
        (sum_xhat / n).reshape(keep),
        (g_mean / n).reshape(keep),
        (2.0 * g_var / n).reshape(keep),
    )
    gx = (input_gradient if dx is None else dx)(x, gy, *terms)
    sum_out = tuple(range(g_bias_full.ndim - 1))  # per-step sums -> [C]; () leaves [C] as is
    g_scale = jnp.sum(g_xhat_dot, axis=sum_out)
    g_bias = jnp.sum(g_bias_full, axis=sum_out)
    return gx, g_scale.astype(scale.dtype), g_bias.astype(scale.dtype)


def input_gradient(x, gy, mean, rstd, coef, mean_gy, mean_gy_xhat, g_mean, g_var2):
    """``dx = coef (gy - mean(gy) - xhat mean(gy xhat)) + g_mean / n + (x - mean) 2 g_var / n``
    (the per-channel terms broadcast against ``x``; ``coef = scale * rstd``)."""
    centred = x - mean
    xhat = centred * rstd
    return coef * (gy - mean_gy - xhat * mean_gy_xhat) + g_mean + centred * g_var2


_textbook.defvjp(_textbook_fwd, _textbook_bwd)


def normalize(
    x, scale, bias, *, axes: tuple[int, ...], keep: tuple[int, ...], epsilon: float, axis_name=None
):
    """``(y, mean, var)``: batch statistics over ``axes`` (shaped ``keep`` to broadcast)."""
    return by_platform(
        lambda x, s, b: _plain(x, s, b, axes, keep, epsilon, axis_name),
        lambda x, s, b: _textbook(x, s, b, axes, keep, epsilon, axis_name),
        x,
        scale,
        bias,
    )
