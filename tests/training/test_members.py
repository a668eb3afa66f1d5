"""Several seeds in one run (``config.num_seeds``): members equal single runs, exact resume,
per-member and aggregate scalars, clear errors for bad member settings.

The runs are the tiny ``digits_static`` net of ``tests.support.runs``, 2 members for 2 epochs of
3 steps, with per-member data order, seeds and values (init_tau 2 / 4, lr 1e-2 / 2e-2): member 1
differs from member 0 in everything a member can differ in.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from plif_jax.errors import ConfigError
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import config as config_lib
from plif_jax.training import members as members_lib
from plif_jax.training import metrics as metrics_lib
from plif_jax.training import run as train
from plif_jax.training import summary as summary_lib
from tests.support.runs import (
    jsonl_without_timing,
    model_arrays,
    module_arrays,
    tb_without_timing,
    tiny_config,
)

pytestmark = pytest.mark.usefixtures("fast")
STEPS, EPOCHS = 3, 2
# vmap may sum in another order than the one-member step: parameters after 6 Adam steps agree to
# this tolerance (observed differences are ~1e-7); test accuracies and predictions are equal.
RTOL, ATOL = 1e-4, 1e-5


def k2_config(**overrides):
    settings = {
        "num_epochs": EPOCHS,
        "steps_per_epoch": STEPS,
        "num_seeds": 2,
        "members.overrides": "neuron.init_tau=2,4;optim.lr=0.01,0.02",
        "members.data_order": "per_member",
    }
    return tiny_config(**{**settings, **overrides})


@pytest.fixture(scope="module")
def k2_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("k2"))
    return workdir, train.train_and_evaluate(k2_config(), workdir)


def _epoch_records(workdir):
    return [r for r in metrics_lib.read_metrics(workdir) if "test/accuracy" in r]


def test_member_equals_a_single_run_with_its_seed_and_values(k2_run, tmp_path):
    workdir, summary = k2_run
    member = members_lib.members(k2_config())[1]
    assert (member.seed, member.data_seed) == (2021, 2021)
    assert member.values == {"neuron.init_tau": 4.0, "optim.lr": 0.02}
    single_dir = str(tmp_path / "single")
    single = train.train_and_evaluate(members_lib.member_config(k2_config(), member), single_dir)
    # Identical test accuracy at every epoch, and the same summary records.
    got = [r["test/accuracy/m1"] for r in _epoch_records(workdir)]
    assert got == [r["test/accuracy"] for r in _epoch_records(single_dir)]
    m1 = summary["members"][1]
    for key in ("best_test_accuracy", "best_test_epoch", "final_test_accuracy"):
        assert m1[key] == single[key], key
    np.testing.assert_allclose(list(m1["tau"].values()), list(single["tau"].values()), rtol=RTOL)
    # The parameters and batch statistics after the run, within the float tolerance.
    model, _ = checkpoint_lib.restore(workdir, "latest", member=1)
    ref = model_arrays(single_dir)
    got_arrays = module_arrays(model)
    assert sorted(got_arrays) == sorted(ref)
    for key in ref:
        np.testing.assert_allclose(got_arrays[key], ref[key], rtol=RTOL, atol=ATOL, err_msg=key)
    # ... and they did train: member 1 moved away from its init (tau_0 = 4).
    assert max(abs(v - 4.0) for v in m1["tau"].values()) > 1e-4


def test_resume_of_a_k_member_run_is_bit_identical(k2_run, tmp_path):
    ref_dir, ref_summary = k2_run
    workdir = str(tmp_path / "resumed")
    first = train.train_and_evaluate(k2_config(), workdir, stop_after_steps=STEPS + 1)
    assert first["status"] == "interrupted" and first["global_step"] == STEPS + 1
    second = train.train_and_evaluate(k2_config(), workdir)
    assert second["status"] == "completed"
    for i in range(2):
        ref = module_arrays(checkpoint_lib.restore(ref_dir, "latest", member=i)[0])
        got = module_arrays(checkpoint_lib.restore(workdir, "latest", member=i)[0])
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"member {i} {key}")
    assert jsonl_without_timing(workdir) == jsonl_without_timing(ref_dir)
    assert tb_without_timing(workdir) == tb_without_timing(ref_dir)
    for key in ("accuracy_A", "members", "best_test_accuracy", "tau"):
        assert second[key] == ref_summary[key], key


def test_per_member_and_aggregate_scalars_summary_and_restore(k2_run):
    workdir, summary = k2_run
    records = _epoch_records(workdir)
    assert [r["step"] for r in records] == [STEPS, 2 * STEPS]
    r = records[-1]
    for name in ("test/accuracy", "test/loss", "train/epoch_loss", "tau/sn0", "tau/sn3",
                 "firing_rate/sn0", "lr", "best/test_accuracy"):  # fmt: skip
        values = [r[f"{name}/m0"], r[f"{name}/m1"]]
        assert r[name] == pytest.approx(np.mean(values)), name
        assert r[f"{name}/std"] == pytest.approx(np.std(values, ddof=1)), name
    assert r["lr/m1"] == pytest.approx(2 * r["lr/m0"])
    window = [x for x in metrics_lib.read_metrics(workdir) if "train/loss" in x]
    assert all(
        f"train/loss/m{i}" in x and "train/accuracy/std" in x for x in window for i in (0, 1)
    )
    tb = metrics_lib.read_tensorboard_scalars(workdir)
    for tag in ("test/accuracy/m1", "test/accuracy/std", "tau/sn0/m0", "train/loss/m1"):
        assert [s for s, _ in tb[tag]][-1] == 2 * STEPS, tag
    # Summary: per member and mean +- std (ddof 1) of accuracy-A.
    with open(os.path.join(workdir, "summary.json")) as f:
        saved = json.load(f)
    per = [m["best_test_accuracy"] for m in saved["members"]]
    assert saved["num_seeds"] == 2 and saved["accuracy_A"]["per_member"] == per
    assert saved["accuracy_A"]["mean"] == pytest.approx(np.mean(per))
    assert saved["accuracy_A"]["std"] == pytest.approx(np.std(per, ddof=1))
    assert [m["seed"] for m in saved["members"]] == [2020, 2021]
    assert summary["compilations"] == {"train_step": 1, "eval_step": 1}
    text = train.format_summary(summary)
    assert "member 1 (seed 2021, neuron.init_tau 4, optim.lr 0.02): accuracy-A" in text
    assert "accuracy-A (best test), mean +- std over 2 members:" in text
    # restore(member=i): one ordinary model, each member its own; a member is required.
    m0, _ = checkpoint_lib.restore(workdir, "latest", member=0)
    m1, _ = checkpoint_lib.restore(workdir, "latest", member=1)
    assert summary_lib.learnable_taus(m0) == pytest.approx(summary["members"][0]["tau"])
    assert summary_lib.learnable_taus(m1) == pytest.approx(summary["members"][1]["tau"])
    with pytest.raises(ValueError, match=r"trained 2 members .*member=0..1"):
        checkpoint_lib.restore(workdir, "latest")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_seeds": 0}, r"config.num_seeds must be an integer >= 1"),
        ({"members.seeds": "1,2,3"}, r"lists 3 seeds but config.num_seeds=2"),
        ({"members.overrides": "optim.lr=0.1"}, r"optim.lr lists 1 values but config.num_seeds=2"),
        ({"members.overrides": "model.channels=4,8"}, r"model.channels would change the network's"),
        ({"members.overrides": "neuron.alpha=1,2"}, r"needs --config.neuron.alpha_learnable=True"),
        ({"members.overrides": "neuron.init_tau=2,0.5"}, r"init_tau"),
        ({"members.overrides": "nope.x=1,2"}, r"nope.x is not a field of the config"),
        ({"members.data_order": "mixed"}, r"config.members.data_order must be one of"),
    ],
)
def test_bad_member_settings_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        config_lib.validate(k2_config(**overrides))
    assert "\n" not in str(err.value)


def test_one_member_config_is_unchanged_and_resume_checks_members():
    c = tiny_config()
    (m,) = members_lib.members(c)
    assert (m.seed, m.data_seed, m.values) == (c.seed, c.seed, {})
    saved = json.loads(c.to_json())
    del saved["num_seeds"], saved["members"]  # a config written before the fields existed
    assert config_lib.resume_conflicts(saved, json.loads(c.to_json())) == []
    diffs = config_lib.resume_conflicts(json.loads(c.to_json()), json.loads(k2_config().to_json()))
    assert "num_seeds: 1 -> 2" in diffs


def test_vmap_and_loop_layouts_give_the_same_step():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from plif_jax import models
    from plif_jax.runtime import parallel
    from plif_jax.training import member_steps, steps

    opts = dict(T=2, input_layout="NHWC", channels=2, hidden=8, input_size=28, in_channels=1)
    built = [models.create_model("mnist", rngs=nnx.Rngs(params=s, dropout=s + 1), **opts)
             for s in (0, 1)]  # fmt: skip
    tx = steps.optax.scale_by_adam()
    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.standard_normal((4, 28, 28, 1)), jnp.float32),
        "y": jnp.arange(4, dtype=jnp.int32),
        "mask": jnp.ones((4,), jnp.float32),
    }
    out = {}
    for layout in ("vmap", "loop"):
        states = []
        for m in built:
            _, p, r = nnx.split(m, nnx.Param, ...)
            states.append(steps.TrainState(p, r, tx.init(p)))
        fn = member_steps.jit_member_steps(
            built[0], k=2, tx=tx, preprocess=lambda x, train, rng: x, data_seeds=[0],
            per_member_data=False, num_classes=10, time_steps=2,
            mesh=parallel.create_mesh(1), layout=layout,
        )  # fmt: skip
        lr = jnp.asarray([1e-2, 2e-2], jnp.float32)
        state, metrics = fn.train(member_steps.stack(states), batch, lr, jnp.int32(0), jnp.int32(0))
        out[layout] = jax.device_get((state.params, metrics["loss"]))
    for a, b in zip(jax.tree.leaves(out["vmap"]), jax.tree.leaves(out["loop"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
