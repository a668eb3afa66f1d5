"""The peers suite at a toy size with whichever peer libraries are installed, and its parts.

Never asserts a timing: it checks that every installed library runs, passes its cross-check
against plif_jax, and lands in the record with consistent overheads and verdicts; that a missing
library is skipped with its reason; and that the load guard redoes a call made under load.
"""

import json
import math
import statistics

import pytest

from benchmarks import peer_libs, peers, quiet

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning"
)


def test_peers_suite_runs_every_installed_library_and_checks_it(tmp_path):
    from benchmarks import cli

    out = tmp_path / "peers.json"
    argv = ["--suite", "peers", "--quick", "--peers-inprocess", "--peers-variants", "linear"]
    cli.main([*argv, "--repeats", "1", "--out", str(out)])
    rec = json.loads(out.read_text())["peers"]
    libs = rec["libraries"]
    assert list(libs) == list(peer_libs.PEERS)
    present = [name for name, lib in libs.items() if not lib["skipped"]]
    for lib in libs.values():  # a skip names the import that failed
        assert lib["skipped"] is None or lib["skipped"].startswith("`import ")
        assert lib["neuron"]
    assert "plif_jax" in present
    for name in present:
        check = rec["check"][f"{name}/linear"]
        assert check["ok"], (name, check)
        assert 0 < check["firing_rate"] < 1
    (row,) = rec["rows"]["linear"]
    assert (row["n"], row["T"], row["batch"]) == (64, 8, 16)
    assert set(row["results"]) == set(present)
    for name, r in row["results"].items():
        floor = row["floor"][peer_libs.PEERS[name].framework]
        parts = floor["parts"]
        assert set(parts) == {"fwd", "dx", "dW"}
        assert math.isclose(floor["floor_s"], parts["fwd"]["median_s"] + parts["dW"]["median_s"])
        # Two overheads: the two processes' medians apart, and the one measured in the
        # library's own process (its step and the floor's fwd and dW called alternately).
        unpaired = r["timing"]["median_s"] - floor["floor_s"]
        assert math.isclose(r["overhead_unpaired_s"], unpaired)
        paired = r["paired"]
        assert paired["floor_s"] > 0 and paired["step_s"] > 0 and paired["repeats"] == 1
        assert math.isclose(r["overhead_s"], paired["step_s"] - paired["floor_s"])
        assert r["guard"]["calls"] == 1 and paired["guard"]["calls"] == 3
    assert row["results"]["plif_jax"]["xla_memory"]["peak_mib"] > 0
    if len(present) > 1:
        v = row["verdict"]
        assert v["best_peer"] in present and v["best_peer"] != "plif_jax"
        assert v["fastest"] == (v["speedup_vs_best_peer"] > 1)


def test_rounds_give_medians_and_the_paired_speedup(tmp_path, capsys):
    from benchmarks import cli

    out = tmp_path / "peers.json"
    argv = ["--suite", "peers", "--quick", "--peers-inprocess", "--peers-variants", "neuron"]
    cli.main([*argv, "--peers-rounds", "3", "--repeats", "1", "--out", str(out)])
    (row,) = json.loads(out.read_text())["peers"]["rows"]["neuron"]
    assert len(row["rounds"]) == 3
    # The order alternates: plif_jax first in rounds 0 and 2, last in round 1.
    assert [list(r["results"])[0] for r in row["rounds"]][::2] == ["plif_jax", "plif_jax"]
    for name, r in row["results"].items():
        rounds = [rd["results"][name]["timing"]["median_s"] for rd in row["rounds"]]
        assert r["timing"]["round_medians_s"] == rounds
        assert r["timing"]["median_s"] == statistics.median(rounds)
        assert r["guard"]["calls"] == 3
    v = row["verdict"]
    if "best_peer" in v:
        assert len(v["speedup_rounds"]) == 3
        assert v["speedup_vs_best_peer"] == statistics.median(v["speedup_rounds"])
        assert f"{v['speedup_vs_best_peer']:.2f}x (" in capsys.readouterr().out


def test_paired_overhead_is_the_median_of_the_rounds_differences():
    # A fake guard hands out the call times in order: step, fwd, dW per round. Pairing takes the
    # median of the per-round differences (1 ms here), not the difference of the medians
    # (20 - 12 = 8 ms), which a drift between rounds would inflate.
    from benchmarks import peer_worker

    times = iter([0.010, 0.004, 0.005, 0.020, 0.006, 0.006, 0.030, 0.014, 0.015])
    calls = []

    class FakeGuard:
        def time(self, call):
            call()
            return next(times)

        def record(self):
            return {"calls": 9, "redone": 0, "accepted_loaded": 0}

    parts = {k: (lambda k=k: calls.append(k)) for k in ("fwd", "dx", "dW")}
    out = peer_worker.paired_overhead(
        lambda: calls.append("step"), parts, ("fwd", "dW"), guard=FakeGuard(), repeats=3
    )
    assert calls == ["step", "fwd", "dW"] * 4  # one warm-up round, then three timed
    assert math.isclose(out["overhead_s"], 0.001)
    assert math.isclose(out["step_s"], 0.020) and math.isclose(out["floor_s"], 0.012)


def test_rounds_below_one_are_refused_in_one_line():
    from benchmarks import cli
    from plif_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="--peers-rounds must be at least 1, got 0"):
        cli.main(["--suite", "peers", "--quick", "--peers-inprocess", "--peers-rounds", "0"])


def test_a_missing_library_is_skipped_with_its_reason(monkeypatch, capsys):
    ghost = peer_libs.Peer(
        "Ghost", "ghost-snn", ("ghost_snn_not_installed",), "torch", "none", (), None
    )
    monkeypatch.setitem(peer_libs.PEERS, "Ghost", ghost)
    out = peers.availability(["Ghost"])
    assert "ghost_snn_not_installed" in out["Ghost"]["skipped"]
    printed = capsys.readouterr().out
    assert "[peers] Ghost: skipped: `import ghost_snn_not_installed` failed" in printed


def test_load_guard_redoes_a_call_during_which_others_used_the_cores(monkeypatch):
    # The machine's busy counter jumps by 1 s per reading for the first call (another process
    # busy), then stands still: the first call is redone once and the second kept.
    readings = iter([0.0, 1.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(quiet, "machine_busy_s", lambda: next(readings))
    guard = quiet.Guard(max_share=0.1, max_redo=3, pause_s=0.0, cores=2)
    guard.time(lambda: None)
    rec = guard.record()
    assert (rec["calls"], rec["redone"], rec["accepted_loaded"]) == (1, 1, 0)


def test_verdict_needs_half_the_best_overhead_and_2x_for_the_neuron():
    def row(ours, peer, ours_oh, peer_oh):
        res = {"plif_jax": (ours, ours_oh), "SpikingJelly": (peer, peer_oh)}
        results = {k: {"timing": {"median_s": t}, "overhead_s": o} for k, (t, o) in res.items()}
        return {"results": results}

    met = peers.verdict(row(1.0, 1.2, 0.1, 0.3), with_linear=True)
    assert met["fastest"] and met["target_met"] and math.isclose(met["overhead_ratio"], 1 / 3)
    assert not peers.verdict(row(1.0, 1.2, 0.2, 0.3), with_linear=True)["target_met"]
    negative = peers.verdict(row(1.0, 1.2, 0.1, -0.05), with_linear=True)  # a noisy peer floor
    assert negative["overhead_ratio"] is None and not negative["target_met"]
    assert peers.verdict(row(1.0, 2.0, 1.0, 2.0), with_linear=False)["target_met"]
    assert not peers.verdict(row(1.0, 1.9, 1.0, 1.9), with_linear=False)["target_met"]
    # Several rounds: the median of the rounds' paired ratios decides, not the ratio of medians.
    rounds = [row(1.0, 2.5, 1.0, 2.5), row(2.0, 3.0, 2.0, 3.0), row(1.0, 2.2, 1.0, 2.2)]
    several = {**row(1.0, 2.5, 1.0, 2.5), "rounds": rounds}
    v = peers.verdict(several, with_linear=False)
    assert v["speedup_rounds"] == [2.5, 1.5, 2.2] and v["speedup_vs_best_peer"] == 2.2
    assert v["target_met"]
