"""Where a config's dataset lives on disk: the embedded synthetic set (generated on first use) or a directory."""
from __future__ import annotations

import os

from mim_jax.data import records, synthetic


def resolve_dataset_dir(data_cfg) -> str:
    """Directory of ArrayRecord shards + metadata.json for `config.data`; generates the synthetic set if needed."""
    if data_cfg.source == "synthetic":
        s = data_cfg.synthetic
        return synthetic.ensure_dataset(num_train=s.num_train, num_val=s.num_val, image_size=s.image_size,
                                        seed=s.seed)
    path = os.path.abspath(os.path.expanduser(data_cfg.path))
    if not os.path.isdir(path):
        raise records.DatasetError(f"data.path={data_cfg.path!r} does not exist or is not a directory; point it at "
                                   f"a dataset written by mim_jax.data (e.g. python -m mim_jax.data.synthetic "
                                   f"--out=DIR) or use --config.data.source=synthetic")
    records.read_metadata(path)
    return path
