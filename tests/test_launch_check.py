"""Launchers load the workers' config with its overrides and check it against the job shape before submitting."""
import pytest

from mim_jax.cluster.launch_check import (
    check_job,
    load_pretrain_config,
    pretrain_flag,
    split_at_dashes,
)
from mim_jax.errors import ConfigError

L16 = "--config=configs/pretrain.py:model=L/16"


def test_split_and_flags():
    own, rest = split_at_dashes(["--nodes=2", "--", L16, "--workdir=/w", "--", "x"])
    assert own == ["--nodes=2"] and rest == [L16, "--workdir=/w", "--", "x"]
    assert split_at_dashes(["--nodes=2"]) == (["--nodes=2"], [])
    assert pretrain_flag(rest, "workdir") == "/w" and pretrain_flag(rest, "seed") is None


def test_config_loads_with_the_workers_overrides():
    config = load_pretrain_config([L16, "--workdir=/w", "--config.mesh.shape=(2,-1,1)",
                                   "--config.data.global_batch_size=512", "--config.seed=7"])
    assert config.model.variant == "L/16"
    assert tuple(config.mesh.shape) == (2, -1, 1)
    assert (config.data.global_batch_size, config.seed) == (512, 7)


@pytest.mark.parametrize("args, message", [
    (["--workdir=/w"], "no --config"),
    ([L16, "--config.mesh.shap=(1,1,1)"], "do not load"),
    (["--config=configs/no_such_file.py"], "do not load"),
])
def test_bad_pretrain_arguments(args, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(args)


def test_job_shape_checks():
    config = load_pretrain_config([L16, "--config.mesh.shape=(1,-1,1)"])
    assert check_job(config, 16, 16, "2 nodes x 8 GPUs") == (1, 16, 1)
    assert check_job(config, 128, 32, "v5p-256") == (1, 128, 1)
    with pytest.raises(ConfigError, match=r"3 nodes x 8 GPUs: data.global_batch_size=4096 .* use a multiple of 24"):
        check_job(config, 24, 24, "3 nodes x 8 GPUs")
    fixed = load_pretrain_config([L16, "--config.mesh.shape=(1,8,1)"])
    with pytest.raises(ConfigError, match=r"2 nodes x 8 GPUs gives 16 devices, but mesh.shape=\(1, 8, 1\) uses 8"):
        check_job(fixed, 16, 16, "2 nodes x 8 GPUs")
    bad = load_pretrain_config([L16, "--config.optim.base_lr=-1"])
    with pytest.raises(ConfigError, match="optim.base_lr"):
        check_job(bad, 16, 16, "2 nodes x 8 GPUs")
