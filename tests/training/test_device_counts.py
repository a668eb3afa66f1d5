"""A batch the devices cannot split: one line naming the nearest device counts that can."""

import pytest

from configs import dvsgesture
from plif_jax.training import config as config_lib


@pytest.mark.parametrize(
    "devices, counts, fix",
    [(3, "2 or 4", "num_devices=2"), (6, "4 or 8", "num_devices=4"), (7, "4 or 8", "=4")],
)
def test_indivisible_batch_names_the_nearest_working_device_counts(devices, counts, fix):
    config = dvsgesture.get_config()  # batch 16, eval batch 16
    with pytest.raises(ValueError) as e:
        config_lib.validate(config, num_devices=devices)
    message = str(e.value)
    assert "\n" not in message and "batch_size=16 is not divisible" in message
    assert f"nearest device counts that divide it are {counts}" in message and fix in message


def test_more_devices_than_samples_names_the_count_below_only():
    config = dvsgesture.get_config()
    config.batch_size = config.eval_batch_size = 10
    with pytest.raises(ValueError, match=r"divide it are 10 \(--config.num_devices=10\)"):
        config_lib.validate(config, num_devices=12)
