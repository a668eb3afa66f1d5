"""The GPU / TPU plan tool: its HLO census, its projections and its command line.

The CUDA plugin is not installed in CI; the tool is exercised on the CPU target (``--targets
cpu``) at tiny size, and the census on a hand-written HLO module with GPU-style kernels.
"""
# ruff: noqa: E501 - the HLO text's lines are as long as XLA writes them

import json

import pytest

from benchmarks import gpu_plan, gpu_plan_report, gpu_targets, hlo_census

HLO = """HloModule m, is_scheduled=true

%fused_dus (param_0: f32[10,4], param_1: f32[4], param_2: s32[]) -> f32[10,4] {
  %param_0 = f32[10,4]{1,0} parameter(0)
  %param_1 = f32[4]{0} parameter(1)
  %param_2 = s32[] parameter(2)
  %bitcast.1 = f32[1,4]{1,0} bitcast(%param_1)
  %constant.1 = s32[] constant(0)
  ROOT %dynamic-update-slice.1 = f32[10,4]{1,0} dynamic-update-slice(%param_0, %bitcast.1, %param_2, %constant.1)
}

%fused_slice (param_0.1: f32[10,4], param_1.1: s32[]) -> f32[1,4] {
  %param_0.1 = f32[10,4]{1,0} parameter(0)
  %param_1.1 = s32[] parameter(1)
  %constant.2 = s32[] constant(0)
  ROOT %dynamic-slice.1 = f32[1,4]{1,0} dynamic-slice(%param_0.1, %param_1.1, %constant.2), dynamic_slice_sizes={1,4}
}

%gemm (param_0.2: f32[8,16], param_1.2: f32[16,32]) -> f32[8,32] {
  %param_0.2 = f32[8,16]{1,0} parameter(0)
  %param_1.2 = f32[16,32]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,32]{1,0} dot(%param_0.2, %param_1.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (p: (s32[], f32[10,4], f32[4])) -> (s32[], f32[10,4], f32[4]) {
  %p = (s32[], f32[10,4]{1,0}, f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %buf = f32[10,4]{1,0} get-tuple-element(%p), index=1
  %v = f32[4]{0} get-tuple-element(%p), index=2
  %row = f32[1,4]{1,0} fusion(%buf, %i), kind=kLoop, calls=%fused_slice
  %upd = f32[10,4]{1,0} fusion(%buf, %v, %i), kind=kLoop, calls=%fused_dus
  ROOT %t = (s32[], f32[10,4]{1,0}, f32[4]{0}) tuple(%i, %upd, %v)
}

%cond (p.1: (s32[], f32[10,4], f32[4])) -> pred[] {
  %p.1 = (s32[], f32[10,4]{1,0}, f32[4]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  ROOT %lt = pred[] fusion(%i.1), kind=kLoop, calls=%fused_slice
}

ENTRY %main (a: f32[8,16], b: f32[16,32], x: f32[2,8,8,3], k: f32[3,3,3,4], s: (s32[], f32[10,4], f32[4])) -> f32[16,32] {
  %a = f32[8,16]{1,0} parameter(0)
  %b = f32[16,32]{1,0} parameter(1)
  %x = f32[2,8,8,3]{3,2,1,0} parameter(2)
  %k = f32[3,3,3,4]{3,2,1,0} parameter(3)
  %s = (s32[], f32[10,4]{1,0}, f32[4]{0}) parameter(4)
  %g = f32[8,32]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm
  %conv = (f32[2,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%x, %k), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward"
  %w = (s32[], f32[10,4]{1,0}, f32[4]{0}) while(%s), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"10"}}
  ROOT %ag = f32[16,32]{1,0} all-gather(%b), dimensions={0}
}
"""


def test_census_multiplies_loops_and_counts_slices_and_flops():
    c = hlo_census.census(HLO)
    # gemm + conv + all-gather + 10 x (slice fusion + in-place update); the condition of a loop
    # with a known trip count is not run.
    assert c.launches == 3 + 10 * 2
    assert c.loop_iterations == 10
    assert c.collectives == {"all-gather": 1}
    assert c.custom_calls == {"__cudnn$convForward": 1}
    assert c.flops == 2 * 8 * 32 * 16 + 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)
    # The slice fusion reads one row (16 B) and its index (4 B), writes the row (16 B); the update
    # reads v (16 B) and the index (4 B) and writes the row in place (16 B).
    per_iteration = (16 + 4 + 16) + (16 + 4 + 16)
    entry = (8 * 16 + 16 * 32 + 8 * 32) * 4 + (2 * 8 * 8 * 3 + 108 + 2 * 8 * 8 * 4) * 4
    entry += 2 * 16 * 32 * 4  # the all-gather's operand and result
    assert c.bytes == entry + 10 * per_iteration
    assert c.bytes_naive > c.bytes  # whole [10, 4] buffers per loop kernel


def test_census_runs_the_condition_of_a_loop_of_unknown_trip_count():
    text = HLO.replace(', backend_config={"known_trip_count":{"n":"10"}}', "")
    c = hlo_census.census(text)
    assert c.loop_iterations == 1  # counted once: unknown
    assert c.launches == 3 + 2 + 2  # the body once, the condition twice (enter and leave)


UNROLLED = """HloModule u, is_scheduled=true

%fused_steps (param_0: f32[4,8], param_1: f32[8], param_2: f32[4,8]) -> (f32[8], f32[8], f32[4,8]) {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[8]{0} parameter(1)
  %param_2 = f32[4,8]{1,0} parameter(2)
  %broadcast.1 = f32[4,8]{1,0} broadcast(%param_1), dimensions={1}
  %multiply.1 = f32[4,8]{1,0} multiply(%param_0, %broadcast.1)
  %add.1 = f32[4,8]{1,0} add(%multiply.1, %broadcast.1)
  %slice.1 = f32[1,8]{1,0} slice(%add.1), slice={[3:4], [0:8]}
  %bitcast.1 = f32[8]{0} bitcast(%slice.1)
  %slice.2 = f32[1,8]{1,0} slice(%multiply.1), slice={[0:1], [0:8]}
  %bitcast.2 = f32[8]{0} bitcast(%slice.2)
  %negate.1 = f32[4,8]{1,0} negate(%param_2)
  ROOT %tuple.1 = (f32[8]{0}, f32[8]{0}, f32[4,8]{1,0}) tuple(%bitcast.1, %bitcast.2, %negate.1)
}

ENTRY %main (x: f32[4,8], s: f32[8], y: f32[4,8]) -> (f32[8], f32[8], f32[4,8]) {
  %x = f32[4,8]{1,0} parameter(0)
  %s = f32[8]{0} parameter(1)
  %y = f32[4,8]{1,0} parameter(2)
  ROOT %f = (f32[8]{0}, f32[8]{0}, f32[4,8]{1,0}) fusion(%x, %s, %y), kind=kLoop, calls=%fused_steps
}
"""


def test_census_counts_the_steps_an_unrolled_scan_slices_after_elementwise_ops():
    # x is scaled and shifted as a whole, then two of its 4 rows are sliced out: XLA's kernel
    # reads those two rows only. s is broadcast (read whole); y is negated whole and output.
    c = hlo_census.census(UNROLLED)
    reads = 2 * 8 * 4 + 8 * 4 + 4 * 8 * 4
    writes = (8 + 8 + 4 * 8) * 4
    assert c.bytes == reads + writes
    assert c.bytes_naive == (4 * 8 + 8 + 4 * 8) * 4 + writes


def test_bound_and_run_projection():
    target = gpu_targets.TARGETS["h200"]
    record = {
        "dtype": "float32", "batch": 16, "ok": True, "memory": {"peak": 2 << 30},
        "census": {"flops": 4.947e12, "bytes": 4.8e9, "launches": 100},
    }  # fmt: skip
    b = gpu_plan_report.bound(record, target)
    assert b["peak_key"] == "tf32" and b["fits"]
    assert b["compute_s"] == pytest.approx(10e-3) and b["memory_s"] == pytest.approx(1e-3)
    assert b["step_s"] == b["compute_s"] and b["limited_by"] == "compute"
    record["bound"] = b
    ev = {"ok": True, "batch": 100, "bound": {"step_s": 1e-3}}
    # 1024 x (1000 // 16 train steps x 10 ms + ceil(250 / 100) eval steps x 1 ms)
    assert gpu_plan_report.run_projection(record, ev, (1000, 250)) == pytest.approx(
        1024 * (62 * 10e-3 + 3 * 1e-3)
    )
    assert gpu_plan_report.run_projection(record, None, (1000, 250)) is None


def test_gpu_target_config_text_names_the_device_and_compute_capability():
    text = gpu_targets.gpu_target_config(gpu_targets.TARGETS["a100-80gb"])
    assert "core_count: 108" in text and "major: 8" in text
    assert 'device_description_str: "NVIDIA A100-SXM4-80GB"' in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--targets", "h100"], "--targets: h100 not among"),
        (["--members", "2:scan"], "--members: '2:scan'"),
        (["--remat", "maybe"], "--remat: maybe"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_plan.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_entries_skip_member_runs_of_eval_and_remat():
    args = gpu_plan.parse_args(["--nets", "nmnist", "--members", "1,2:vmap"])
    keys = [gpu_plan.entry_key(e) for e in gpu_plan.plan_entries(args)]
    assert len(keys) == 2 * 2 * 2 + 2  # kinds x dtypes x remat at k=1, then k=2 train plain
    assert "h200|nmnist|train|bfloat16|plain|k2|vmap|dev1" in keys
    assert gpu_plan.remat_chunk(20) == 5 and gpu_plan.remat_chunk(8) == 2


def test_cpu_plan_writes_json_and_markdown_and_skips_done_entries(tmp_path):
    out, md = tmp_path / "plan.json", tmp_path / "plan.md"
    argv = ["--targets", "cpu", "--nets", "nmnist", "--kinds", "eval", "--dtypes", "float32"]
    argv += ["--remat", "off", "--members", "1", "--tiny", "--out", str(out), "--markdown", str(md)]
    assert gpu_plan.main(argv) == 0
    results = json.loads(out.read_text())
    (key, record), = results["entries"].items()  # fmt: skip
    assert key == "cpu|nmnist|eval|float32|plain|k1|loop|dev1|tiny"
    assert record["ok"], record.get("error")
    assert record["census"]["launches"] > 0 and record["memory"]["argument"] > 0
    assert record["batch"] == 64  # configs/nmnist.py's eval batch
    assert "PROJECTION" in results["meta"]["label"]
    assert "| cpu | nmnist | eval | float32 | off | 1 | 1 |" in md.read_text()
    record["census"]["launches"] = -1  # a cached entry is not compiled again
    out.write_text(json.dumps(results))
    gpu_plan.main(argv)
    assert json.loads(out.read_text())["entries"][key]["census"]["launches"] == -1
