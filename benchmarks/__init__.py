"""Speed and memory benchmarks of plif_jax, side by side with SpikingJelly 2.0 (torch CPU).

``python -m benchmarks`` is the entry point; see ``BENCHMARKS.md`` for the results.
Modules: ``timing`` (clocks, machine record), ``workloads`` (what is timed, JAX and torch),
``roofline`` (FLOP counting and the machine's measured peak), ``sj_reference`` (the paper networks
in torch + SpikingJelly 2.0: the benchmark's baseline and the parity tests' oracle).
"""
