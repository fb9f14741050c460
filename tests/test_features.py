"""Feature extraction: pooling, padding removal, and equality between 1 device, 8 fake devices and 2 processes."""
import jax
import ml_collections
import numpy as np
import pytest

from conftest import tiny_pretrain_config
from mim_jax.data import pipeline
from mim_jax.evaluate import features
from mim_jax.objectives.mae import build_mae
from mim_jax.parallel.sharding import logical_rules, make_mesh

pytestmark = pytest.mark.fake_devices  # feature extraction on a (4, 2, 1) mesh of fake CPU devices


def extract(dataset, mesh_shape, devices, pool):
    config = tiny_pretrain_config(dataset)
    mesh_cfg = ml_collections.ConfigDict(dict(shape=mesh_shape, rules=config.mesh.rules))
    mesh, rules = make_mesh(mesh_cfg, devices), logical_rules(mesh_cfg)
    encoder = build_mae(config).encoder
    params = jax.jit(encoder.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
    return features.extract_features(encoder, params, dataset, "val", pool=pool, batch_size=16, mesh=mesh,
                                     rules=rules), (encoder, params)


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_eight_devices_match_one(tiny_dataset, pool):
    (x1, y1), (encoder, params) = extract(tiny_dataset, (1, 1, 1), jax.devices()[:1], pool)
    (x8, y8), _ = extract(tiny_dataset, (4, 2, 1), jax.devices(), pool)
    assert x1.shape == (40, 32)  # 40 val images: the padded tail of the last batch is dropped
    np.testing.assert_allclose(x8, x1, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y8, y1)
    # Labels come back in record order, as the eval pipeline reads them.
    expected = np.concatenate([b["label"][b["mask"]] for b in pipeline.eval_batches(
        tiny_dataset, "val", batch_size=16, image_size=32)])
    np.testing.assert_array_equal(y1, expected)


def test_pool_tokens():
    tokens = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(features.pool_tokens(tokens, "cls"), tokens[:, 0])
    np.testing.assert_allclose(features.pool_tokens(tokens, "mean"), tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match="pool='max'"):
        features.pool_tokens(tokens, "max")


TWO_PROCESS_SCRIPT = """
import sys
import jax
import numpy as np
from mim_jax.parallel import distributed
distributed.initialize()
from mim_jax.config.defaults import base_config
from mim_jax.evaluate import features
from mim_jax.models.vit import Encoder
from mim_jax.parallel.sharding import logical_rules, make_mesh
dataset, out = sys.argv[1], sys.argv[2]
mesh_cfg = base_config().mesh
mesh_cfg.shape = (4, 2, 1)
encoder = Encoder(32, 1, 2, 64, 8, 32)  # the encoder of conftest.tiny_pretrain_config
params = jax.jit(encoder.init, backend="cpu")(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
params = jax.tree.map(lambda x: np.asarray(getattr(x, "value", x)), params, is_leaf=lambda x: hasattr(x, "names"))
x, y = features.extract_features(encoder, params, dataset, "val", pool="mean", batch_size=16,
                                 mesh=make_mesh(mesh_cfg), rules=logical_rules(mesh_cfg))
if jax.process_index() == 0:
    np.savez(out, x=x, y=y)
"""


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.distributed
def test_two_processes_match_one_device(tiny_dataset, tmp_path):
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script, out = tmp_path / "extract.py", tmp_path / "features.npz"
    script.write_text(TWO_PROCESS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIM_JAX_", "SLURM_", "XLA_FLAGS"))}
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.join(repo, "launch", "local_multihost.py"), "--num_processes=2",
           "--devices_per_process=4", "--timeout_s=240", "--", str(script), tiny_dataset, str(out)]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)  # no retry
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (x1, y1), _ = extract(tiny_dataset, (1, 1, 1), jax.devices()[:1], "mean")
    two = np.load(out)
    np.testing.assert_allclose(two["x"], x1, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(two["y"], y1)
