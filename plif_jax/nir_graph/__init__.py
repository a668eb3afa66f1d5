"""NIR (Neuromorphic Intermediate Representation, PyPI ``nir`` 1.0.x) export and import.

:func:`export` turns one of the paper's six networks (eval mode) into a ``nir.NIRGraph``;
:func:`import_graph` turns a graph back into a runnable plif_jax module. Files: ``nir.write`` /
``nir.read``.

The mapping (NIR is channel-first, shapes without the batch axis, every node one time step)::

    plif_jax                              NIR
    ConvBN (3x3, no bias) + BN (eval)     Conv2d, BN folded: W' = W g/sqrt(var+eps),
                                          b' = beta - g mean/sqrt(var+eps); padding (1, 1)
    PLIF / LIF (hard reset, decay_input)  LIF: tau = 1/sigmoid(w) (LIF: its tau) times dt,
                                          r = 1, v_leak = v_reset = V_reset, v_threshold = V_th,
                                          full arrays of the layer's (C, H, W) / (N,) shape
    2x2 max pooling of spikes             SumPool2d(2, 2) then Threshold(0.5): the OR of 0/1
    2x2 average pooling                   AvgPool2d(2, 2)
    dropout (eval)                        nothing (identity)
    flatten (NHWC order)                  Flatten(start_dim=0) over (C, H, W); the first FC's
                                          columns permuted from the HWC to the CHW order
    FC (no bias), kernel [in, out]        Linear, weight [out, in]
    voting readout (mean of 10)           Linear with a block matrix of 1/10
    static nets' encoder (image once)     the same Conv2d applied to the image at every step

The time step: NIR's LIF is ``tau dv/dt = (v_leak - v) + r I``. Forward Euler with step ``dt``
gives ``v <- v + dt/tau (v_leak - v + r I)``; with ``tau_nir = tau * dt`` (``dt = 1`` by default,
recorded in the graph's metadata) that is the paper's charge
``H = V + (X - (V - V_reset)) / tau`` exactly. NIR fires at ``v > v_threshold``, the paper at
``H >= V_th``; the metadata records ``threshold_rule='>='`` and this module's runner follows the
metadata (NIR's ``>`` for a graph without it).

Exactness. A graph that plif_jax exported carries, in its nodes' metadata, the values the NIR
parameters were computed from and cannot be recovered from exactly in floating point: each
Conv2d node the unfolded kernel and the four BatchNorm vectors, each LIF node of a PLIF layer its
``w``. :func:`import_graph` rebuilds the same network class from the graph's ``plif_jax`` entry
(name and options), fills in those values and the Linear weights (a transpose and a permutation,
exact), and checks that the NIR parameters are what they were folded into (else the graph was
edited: it then runs through the generic runner). The rebuilt network is the exported one: same
class, same parameters bit for bit, so the same spikes.

Any other feed-forward graph of the supported nodes (Input, Output, Conv2d, Linear, Affine, LIF,
IF, Threshold, SumPool2d, AvgPool2d, Flatten, Scale), or a plif_jax graph with
``generic=True``, runs through :class:`NIRNetwork`: the nodes in topological order on
``[T, B, ...]`` (channel-first), the neurons through :func:`plif_jax.neurons.lif_multistep` where
a layer's parameters are uniform. It computes the folded convolution, so its currents differ
from the network's in the last bits (``tests/interop/test_nir.py`` shows the spikes do not).
"""

from plif_jax.nir_graph.common import (
    EULER,
    FORMAT,
    METADATA_KEY,
    SUPPORTED_NODES,
    graph_info,
    plif_jax_options,
)
from plif_jax.nir_graph.exporting import export
from plif_jax.nir_graph.importing import import_graph, strip_metadata
from plif_jax.nir_graph.runner import NIRNetwork

__all__ = [
    "EULER", "FORMAT", "METADATA_KEY", "NIRNetwork", "SUPPORTED_NODES", "export", "graph_info",
    "import_graph", "plif_jax_options", "strip_metadata",
]  # fmt: skip
