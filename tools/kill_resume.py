"""Kill -9 a training run at random moments, rerun it each time, compare with an uninterrupted run.

``python -m tools.kill_resume --kills 10`` trains the quick-start N-MNIST-style network on
``digits_events`` (shrunk: 2 channels, hidden 16, 2 epochs of 25 steps) twice from scratch, each
with its own frame cache: once uninterrupted, and once killed with ``SIGKILL`` (the whole process
group, frame-conversion workers included) at ``--kills`` seeded random moments and restarted
with the same command after each kill. Then it compares, bit for bit, the frame caches, the
latest and best checkpoints' parameters and statistics (read back with
:func:`plif_jax.training.checkpoint.restore`), every ``metrics.jsonl`` row and TensorBoard
scalar except the ``perf/*`` timings, and ``summary.json`` except its wall-clock and
process-local fields (:data:`tools.run_compare.SUMMARY_PROCESS_FIELDS`). It prints each kill (the
moment, what was on disk) and the result, and exits with status 1 if anything differs.

Kill moments cycle through the kinds ``convert`` (once the train split's frame cache holds a
random number of samples, while the conversion is still running), ``save`` (a random 0-50 ms
after the first checkpoint of that start is seen: its temporary directory when the 2 ms poll
catches one, i.e. during Orbax's asynchronous save, else the finished directory) and ``time``
(a random 5-95 % of the last measured time from the end of frame conversion to the first
checkpoint, counted from the start: start-up, compilation, steps, evaluation). A kill whose
moment never comes (the run finished first) is reported and not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from tools.run_compare import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = (sys.executable, "-m", "experiments.train")
DEFAULT_OVERRIDES = (
    "--config=configs/quickstart.py",
    "--config.model.channels=2",
    "--config.model.hidden=16",
    "--config.num_epochs=2",
    "--config.steps_per_epoch=25",
    "--config.log_every_steps=10",
    "--config.progress_bar=False",
)
KINDS = ("convert", "save", "time")
POLL_S = 0.002


@dataclasses.dataclass
class Kill:
    """One planned kill and, once it fired, what was on disk at that moment."""

    kind: str
    param: float
    fired: bool = False
    at_s: float = 0.0
    cache_samples: int = 0
    cache_complete: bool = False
    checkpoints: tuple[str, ...] = ()
    temporary: tuple[str, ...] = ()
    metrics_rows: int = 0

    def describe(self) -> str:
        if not self.fired:
            return f"{self.kind}({self.param:g}): the run finished first, no kill"
        if not self.cache_complete:
            phase = f"frame conversion ({self.cache_samples} train samples cached)"
        elif self.temporary:
            phase = f"checkpoint save in flight ({', '.join(self.temporary)})"
        elif self.kind == "save":
            phase = f"just after checkpoint {self.checkpoints[-1]} appeared"
        elif self.metrics_rows:
            phase = f"training/evaluation ({self.metrics_rows} metrics rows on disk)"
        else:
            phase = "start-up, data loading or compilation"
        return f"{self.kind}({self.param:g}) at {self.at_s:.2f} s: {phase}"


def plan_kills(n: int, seed: int, num_train: int) -> list[Kill]:
    """``n`` kills, kinds cycling through :data:`KINDS`, parameters drawn from ``seed``."""
    rng = random.Random(seed)
    kills = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "convert":
            param = rng.randint(1, max(1, num_train - 1))  # samples cached when killed
        elif kind == "save":
            param = round(rng.uniform(0.0, 0.05), 4)  # seconds after the save is first seen
        else:
            param = round(rng.uniform(0.05, 0.95), 3)  # fraction of the measured window
        kills.append(Kill(kind, param))
    return kills


class Run:
    """One run directory with its own frame cache, started by a fixed command."""

    def __init__(self, directory: str, cli: Sequence[str], overrides: Sequence[str], env=None):
        self.directory = directory
        self.workdir = os.path.join(directory, "run")
        self.cache = os.path.join(directory, "frames")
        self.command = [
            *cli,
            *overrides,
            f"--workdir={self.workdir}",
            f"--config.data.cache_dir={self.cache}",
        ]
        self.env = dict(os.environ if env is None else env)
        self.starts = 0
        # Seconds from the end of frame conversion (or the start) to the first checkpoint in
        # the last start that showed both: what a resumed start needs before its first save.
        self.window_s: float | None = None

    # --- what is on disk ------------------------------------------------------------------
    def cache_state(self) -> tuple[int, bool]:
        """(samples cached for the train split, whether its conversion is complete)."""
        root = os.path.join(self.cache, "digits_events")
        if not os.path.isdir(root):
            return 0, False
        dirs = [os.path.join(root, d) for d in os.listdir(root) if d.startswith("train-")]
        if not dirs:
            return 0, False
        n = sum(f.endswith(".npy") and not f.startswith(".") for f in os.listdir(dirs[0]))
        return n, os.path.exists(os.path.join(dirs[0], "complete"))

    def checkpoint_entries(self) -> tuple[list[str], list[str]]:
        """(finished ``latest|best/<step>`` names, temporary directories of saves in flight)."""
        done, tmp = [], []
        for sub in ("latest", "best"):
            path = os.path.join(self.workdir, "checkpoints", sub)
            for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
                (done if name.isdigit() else tmp).append(f"{sub}/{name}")
        return done, tmp

    def metrics_rows(self) -> int:
        path = os.path.join(self.workdir, "metrics.jsonl")
        if not os.path.exists(path):
            return 0
        with open(path, "rb") as f:
            return f.read().count(b"\n")

    # --- running ---------------------------------------------------------------------------
    def start(self) -> subprocess.Popen:
        self.starts += 1
        os.makedirs(self.directory, exist_ok=True)
        log = open(os.path.join(self.directory, f"start{self.starts}.log"), "wb")  # noqa: SIM115
        try:
            return subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill reaches the workers
            )
        finally:
            log.close()

    def log_tail(self, n: int = 3000) -> str:
        with open(os.path.join(self.directory, f"start{self.starts}.log"), errors="replace") as f:
            return f.read()[-n:]

    def run_to_end(self, timeout_s: float) -> float:
        """Starts the command and waits for it; returns its wall time."""
        t0 = time.monotonic()
        self.supervise(None, timeout_s)
        return time.monotonic() - t0

    def run_and_kill(self, kill: Kill, timeout_s: float) -> None:
        """Starts the command and SIGKILLs its process group at ``kill``'s moment."""
        self.supervise(kill, timeout_s)

    def supervise(self, kill: Kill | None, timeout_s: float) -> None:
        """Runs one start, polling what it writes; kills it when ``kill`` is due."""
        done_at_start, tmp_at_start = self.checkpoint_entries()
        seen_at_start = {n.split("/")[1] for n in done_at_start}
        converted_at = 0.0 if self.cache_state()[1] else None
        saved_at = None
        window = self.window_s
        t0 = time.monotonic()
        proc = self.start()
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            if elapsed > timeout_s:
                _kill_group(proc)
                raise RuntimeError(f"{self.command} ran past {timeout_s} s:\n{self.log_tail()}")
            if converted_at is None and self.cache_state()[1]:
                converted_at = elapsed
            if saved_at is None:
                done, tmp = self.checkpoint_entries()
                # latest/4, best/4.orbax-checkpoint-tmp-...: step 4, temporary or finished
                if any(n.split("/")[1].split(".")[0] not in seen_at_start for n in tmp + done):
                    saved_at = elapsed
                    if converted_at is not None:
                        self.window_s = saved_at - converted_at
            if kill is not None and self._due(kill, elapsed, saved_at, window):
                cache_n, complete = self.cache_state()
                done, tmp = self.checkpoint_entries()
                rows = self.metrics_rows()
                _kill_group(proc)
                kill.fired, kill.at_s = True, elapsed
                kill.cache_samples, kill.cache_complete = cache_n, complete
                # A temporary directory left by the previous kill is not a save of this start.
                tmp = [t for t in tmp if t not in tmp_at_start]
                kill.checkpoints, kill.temporary, kill.metrics_rows = tuple(done), tuple(tmp), rows
                return
            time.sleep(POLL_S)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.command} exited {proc.returncode}:\n{self.log_tail()}")

    def _due(self, kill: Kill, elapsed: float, saved_at: float | None, window) -> bool:
        if kill.kind == "time":
            return window is not None and elapsed >= kill.param * window
        if kill.kind == "convert":
            n, complete = self.cache_state()
            return not complete and n >= kill.param
        return saved_at is not None and elapsed >= saved_at + kill.param


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@dataclasses.dataclass
class Report:
    kills: list[Kill]
    differences: dict[str, list[str]]
    reference_s: float
    killed_total_s: float
    starts: int

    @property
    def identical(self) -> bool:
        return not any(self.differences.values())

    def lines(self) -> list[str]:
        fired = [k for k in self.kills if k.fired]
        out = [f"kill {i + 1}: {k.describe()}" for i, k in enumerate(self.kills)]
        out.append(
            f"{len(fired)} kills fired ({len(self.kills) - len(fired)} planned moments never "
            f"came); {self.starts} starts of the killed run, {self.killed_total_s:.1f} s in all; "
            f"uninterrupted run {self.reference_s:.1f} s"
        )
        for item, diffs in self.differences.items():
            out.append(f"{item}: {'bit-identical' if not diffs else 'DIFFERENT: ' + str(diffs)}")
        return out


def kill_and_resume(
    directory: str,
    kills: int,
    seed: int = 0,
    *,
    cli: Sequence[str] = CLI,
    overrides: Sequence[str] = DEFAULT_OVERRIDES,
    env: dict[str, str] | None = None,
    num_train: int = 4000,
    timeout_s: float = 600.0,
) -> Report:
    """The whole check (see the module docstring); returns its :class:`Report`.

    Args:
      directory: where both runs and their frame caches go (created).
      kills: how many kill moments to plan.
      seed: seeds the moments.
      cli: the command that starts training (``python -m experiments.train``).
      overrides: its flags (config file and overrides; workdir and cache dir are added).
      env: the environment of the training processes (default: this one's).
      num_train: training samples of the run (bounds the ``convert`` moments).
      timeout_s: limit per start.
    """
    reference = Run(os.path.join(directory, "reference"), cli, overrides, env)
    killed = Run(os.path.join(directory, "killed"), cli, overrides, env)
    reference_s = reference.run_to_end(timeout_s)
    plan = plan_kills(kills, seed, num_train)
    killed.window_s = reference.window_s
    t0 = time.monotonic()
    for kill in plan:
        killed.run_and_kill(kill, timeout_s)
    killed.run_to_end(timeout_s)  # the same command once more, left to finish
    return Report(
        kills=plan,
        differences=compare(reference, killed),
        reference_s=reference_s,
        killed_total_s=time.monotonic() - t0,
        starts=killed.starts,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="kill moments to plan")
    parser.add_argument("--seed", type=int, default=0, help="seed of the moments")
    parser.add_argument("--dir", default="runs/kill_resume", help="where the runs go (new)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra flag for experiments.train, e.g. --override=--config.num_epochs=3",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per start")
    args = parser.parse_args(argv)
    if args.kills < 0:
        parser.error(f"--kills must be >= 0, got {args.kills}")
    if os.path.exists(args.dir) and os.listdir(args.dir):
        print(
            f"error: --dir {args.dir} exists and is not empty: remove it or give another --dir "
            "(both runs must start from nothing).",
            file=sys.stderr,
        )
        return 2
    report = kill_and_resume(
        args.dir,
        args.kills,
        args.seed,
        overrides=[*DEFAULT_OVERRIDES, *args.override],
        timeout_s=args.timeout,
    )
    print("\n".join(report.lines()))
    return 0 if report.identical else 1


if __name__ == "__main__":
    sys.exit(main())
