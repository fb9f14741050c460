"""Config-file helpers: key=value arguments with one-line errors, and loading a sibling config file."""
import pytest

from mim_jax.config import recipes


def test_parse_arg_splits_and_checks_keys_and_choices():
    assert recipes.parse_arg("model=L/16,recipe=xie", ("model", "recipe")) == {"model": "L/16", "recipe": "xie"}
    assert recipes.parse_arg("", ("model",)) == {}
    with pytest.raises(ValueError, match=r"config argument 'L/16' must look like key=value \(keys: model, recipe\)"):
        recipes.parse_arg("L/16", ("model", "recipe"))
    with pytest.raises(ValueError, match=r"unknown config argument 'modle'; use model=..., recipe=..."):
        recipes.parse_arg("modle=B/16", ("model", "recipe"))
    with pytest.raises(ValueError, match=r"config argument recipe='bert'; use one of \('mae', 'maws'\)"):
        recipes.parse_arg("recipe=bert", ("recipe",), {"recipe": ("mae", "maws")})


def test_load_sibling_reads_the_file_next_to_the_caller(tmp_path):
    (tmp_path / "base.py").write_text("def get_config():\n    return {'steps': 5}\n")
    module = recipes.load_sibling(str(tmp_path / "derived.py"), "base.py")
    assert module.get_config() == {"steps": 5}
