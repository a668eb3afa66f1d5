"""Accelerators to compile for without having one: XLA's compile-only GPU and TPU devices.

A GPU target is an XLA ``GpuTargetConfigProto`` (text form) handed to
``jax.experimental.topologies.get_topology_desc(platform="cuda", ...)``; the CUDA plugin then
compiles for it on a machine without a GPU (``JAX_PLATFORMS=cpu`` must be set, or the plugin's
driver check fails). A TPU target is libtpu's compile-only topology. Nothing runs: what the
compiled program says (memory plan, kernels) is a property of the program, and times derived
from it are projections. The recipe and its references: ``BENCHMARKS.md``, "GPU and TPU plan".

The peak rates below are the vendors' published dense figures, used only for the projected
bound on step time (:mod:`benchmarks.gpu_plan`); ``tf32`` is what XLA:GPU runs float32
convolutions and matmuls with at the default precision on sm_80 and later, ``f32`` what
``precision='highest'`` gets.
"""

from __future__ import annotations

import dataclasses

_GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Target:
    """One compile-only accelerator."""

    name: str
    description: str
    platform: str  # 'cuda' or 'tpu'
    memory_bytes: int
    bandwidth: float  # bytes/s
    peak_flops: dict  # {'f32', 'tf32', 'bf16'} -> FLOP/s (dense)
    gpu: dict | None = None  # GpuTargetConfigProto fields (cuda)
    tpu_topology: str | None = None
    launch_s: float = 0.0  # assumed cost of one kernel launch (projection)


def _gpu(sm: tuple[int, int], cores: int, mem: int, bw: float, l2: int, clock: float,
         smem_core: int, smem_optin: int, threads_core: int, name: str) -> dict:  # fmt: skip
    return dict(
        threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=49152,
        shared_memory_per_core=smem_core, threads_per_core_limit=threads_core,
        core_count=cores, fpus_per_core=128, block_dim_limit_x=2147483647,
        block_dim_limit_y=65535, block_dim_limit_z=65535, memory_bandwidth=int(bw),
        l2_cache_size=l2, clock_rate_ghz=clock, device_memory_size=mem,
        shared_memory_per_block_optin=smem_optin, cc=sm, registers_per_core_limit=65536,
        registers_per_block_limit=65536, device_name=name,
    )  # fmt: skip


# Kernel launch cost assumed for the projection: ~2 us per kernel launched from the host.
LAUNCH_S = 2e-6

TARGETS: dict[str, Target] = {
    "h200": Target(
        "h200",
        "NVIDIA H200 SXM (141 GB HBM3e, 4.8 TB/s; sm_90, 132 SMs: an H100 SXM's description with "
        "the H200's memory size and bandwidth)",
        "cuda",
        150755852288,
        4.8e12,
        {"f32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12},
        gpu=_gpu(
            (9, 0), 132, 150755852288, 4.8e12, 52428800, 1.98, 233472, 232448, 2048, "NVIDIA H200"
        ),
        launch_s=LAUNCH_S,
    ),  # fmt: skip
    "a100-80gb": Target(
        "a100-80gb",
        "NVIDIA A100 SXM 80 GB (2.04 TB/s; sm_80, 108 SMs)",
        "cuda",
        85899345920,
        2.039e12,
        {"f32": 19.5e12, "tf32": 156e12, "bf16": 312e12},
        gpu=_gpu(
            (8, 0),
            108,
            85899345920,
            2.039e12,
            41943040,
            1.41,
            167936,
            166912,
            2048,
            "NVIDIA A100-SXM4-80GB",
        ),
        launch_s=LAUNCH_S,
    ),  # fmt: skip
    "rtx4090-24gb": Target(
        "rtx4090-24gb",
        "NVIDIA GeForce RTX 4090 24 GB (1.01 TB/s; sm_89, 128 SMs): a 24 GB card",
        "cuda",
        25393692672,
        1.008e12,
        {"f32": 82.6e12, "tf32": 82.6e12, "bf16": 165.2e12},
        gpu=_gpu(
            (8, 9),
            128,
            25393692672,
            1.008e12,
            75497472,
            2.52,
            102400,
            101376,
            1536,
            "NVIDIA GeForce RTX 4090",
        ),
        launch_s=LAUNCH_S,
    ),  # fmt: skip
    "tpu-v5e": Target(
        "tpu-v5e",
        "Google TPU v5e, one chip (16 GiB HBM2e, 819 GB/s; 197 TFLOP/s bf16; float32 matmuls "
        "run as bf16 passes at the default precision)",
        "tpu",
        16 * _GIB,
        819e9,
        {"f32": 197e12 / 6, "tf32": 197e12, "bf16": 197e12},
        tpu_topology="v5e:1x1",
    ),
}


def gpu_target_config(target: Target) -> str:
    """The ``GpuTargetConfigProto`` text of a CUDA target."""
    g = dict(target.gpu)
    major, minor = g.pop("cc")
    name = g.pop("device_name")
    lines = ["gpu_device_info {"]
    lines += [f"  {k}: {v}" for k, v in g.items()]
    lines += ["  cuda_compute_capability {", f"    major: {major}", f"    minor: {minor}", "  }"]
    lines += ["}", 'platform_name: "CUDA"', "dnn_version_info {", "  major: 9", "  minor: 28",
              "}", "runtime_version {", "  major: 12", "  minor: 9", "  patch: 0", "}",
              f'device_description_str: "{name}"']  # fmt: skip
    return "\n".join(lines) + "\n"


def devices(target: Target, count: int = 1) -> list:
    """``count`` compile-only devices of ``target`` (one host)."""
    from jax.experimental import topologies

    if target.platform == "cuda":
        topo = topologies.get_topology_desc(
            platform="cuda", target_config=gpu_target_config(target), topology=f"1x1x{count}"
        )
    elif count == 1:  # a single v5e chip needs explicit host bounds
        topo = topologies.get_topology_desc(
            target.tpu_topology,
            "tpu",
            chip_config_name="default",
            chips_per_host_bounds=(1, 1, 1),
            num_slices=1,
            wrap=(False, False, False),
        )
    else:
        topo = topologies.get_topology_desc(f"v5e:{count // 2}x2", "tpu")
    found = list(topo.devices)
    if len(found) != count:
        raise RuntimeError(
            f"{target.name}: asked for {count} devices, the topology has {len(found)}"
        )
    return found
