"""A study's grid: axes of labelled values, expanded into cells (one pretraining run each) with resolved configs.

A study file (`configs/studies/<name>.py`) defines `get_study(arg) -> Study`. Each axis value names what it
changes: config-file arguments (`args`, the `:key=value` of the config spec), dotted config fields
(`overrides`), another config file (`config`), and what it needs beyond the config (`needs`: an objective or a
model size by name). A cell is the product of one value per axis; its name joins the values' labels.
Overrides may refer to another cell's run directory as `{cell:axis=label}` (e.g. a WSP run initialized from the
MAE cell of the same model): that cell runs first.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

import ml_collections

from mim_jax.config.cli import load_config_file
from mim_jax.errors import ConfigError
from mim_jax.study import requirements

AXES = ("model", "data", "length", "objective", "target", "init")
CELL_REF_RE = re.compile(r"\{cell:([a-z_]+)=([^}]+)\}")


@dataclasses.dataclass(frozen=True)
class Value:
    """One value of an axis: its label, what it changes in the config, what it needs, its position on a plot."""
    label: str
    args: dict = dataclasses.field(default_factory=dict)       # config-file arguments, e.g. {'model': 'L/16'}
    overrides: dict = dataclasses.field(default_factory=dict)  # dotted fields, e.g. {'data.subset.count': 10**6}
    config: str = ""                                           # another config file for this value ("" = the study's)
    needs: dict = dataclasses.field(default_factory=dict)      # {'objective': 'wsp'} / {'model': 'swinv2_s'}
    x: float | None = None                                     # plot position: images, steps, parameters


@dataclasses.dataclass(frozen=True)
class Axis:
    """A named axis (one of AXES) and its values, in plot order."""
    name: str
    values: tuple[Value, ...]

    def value(self, label: str) -> Value:
        """The value labelled `label`, or a ConfigError listing the labels."""
        for v in self.values:
            if v.label == label:
                return v
        raise ConfigError(f"unknown value {label!r} of axis {self.name!r}; use one of "
                          f"{[v.label for v in self.values]}")


@dataclasses.dataclass(frozen=True)
class Study:
    """A grid of pretraining runs: a base config file, axes, and how to estimate and launch them."""
    name: str
    config: str                                                # base config file, e.g. configs/pretrain.py
    axes: tuple[Axis, ...]
    args: dict = dataclasses.field(default_factory=dict)       # base config-file arguments
    overrides: dict = dataclasses.field(default_factory=dict)  # fields set in every cell
    assumed_mfu: float = 0.4                                   # for chip-hour estimates (stated in every plan)
    metric: str = "linear_probe/top1"                          # the headline metric of the dataset-size plot
    description: str = ""

    def axis(self, name: str) -> Axis | None:
        """The axis called `name`, if the study has one."""
        return next((a for a in self.axes if a.name == name), None)

    def select(self, spec: str) -> Study:
        """The study restricted to 'axis=label|label,axis=label' (unknown axes or labels fail in one line)."""
        keep: dict[str, list[str]] = {}
        for item in filter(None, (spec or "").split(",")):
            name, sep, labels = item.partition("=")
            if not sep or name not in [a.name for a in self.axes]:
                raise ConfigError(f"study {self.name}: {item!r} is not axis=label (axes: "
                                  f"{[a.name for a in self.axes]})")
            keep[name] = labels.split("|")
        axes = tuple(Axis(a.name, tuple(a.value(label) for label in keep[a.name])) if a.name in keep else a
                     for a in self.axes)
        return dataclasses.replace(self, axes=axes)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: its name, the value of each axis, its config spec and overrides."""
    name: str
    values: dict            # axis name -> Value
    spec: str               # config file[:args]
    overrides: dict         # dotted field -> value (cell references still as {cell:...})
    needs: dict             # what must exist: {'objective': [...], 'model': [...], 'config': [...]}

    def label(self, axis: str) -> str | None:
        """This cell's label on `axis` (None when the study has no such axis)."""
        value = self.values.get(axis)
        return value.label if value else None

    def x(self, axis: str) -> float | None:
        """This cell's plot position on `axis`."""
        value = self.values.get(axis)
        return value.x if value else None

    def references(self) -> dict[str, dict]:
        """{field: {axis: label}} of overrides that name another cell's run directory."""
        refs = {}
        for key, value in self.overrides.items():
            if isinstance(value, str):
                for axis, label in CELL_REF_RE.findall(value):
                    refs.setdefault(key, {})[axis] = label
        return refs


def cell_name(labels: list[str]) -> str:
    """'B/16', '0.5M', 'clip' -> 'B16_0.5M_clip' (a directory name)."""
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]", "", label) for label in labels)


def _spec(config: str, args: dict) -> str:
    arg = ",".join(f"{k}={v}" for k, v in args.items())
    return f"{config}:{arg}" if arg else config


def expand(study: Study) -> list[Cell]:
    """Every cell of the grid (axis order = the study's; values in their order), names unique."""
    for axis in study.axes:
        if axis.name not in AXES:
            raise ConfigError(f"study {study.name}: axis {axis.name!r} is not one of {AXES}")
        if not axis.values:
            raise ConfigError(f"study {study.name}: axis {axis.name!r} has no values")
    cells = []
    for combo in itertools.product(*(a.values for a in study.axes)):
        config = next((v.config for v in reversed(combo) if v.config), study.config)
        args, overrides, needs = dict(study.args), dict(study.overrides), {}
        for v in combo:
            args.update(v.args)
            overrides.update(v.overrides)
            for kind, name in v.needs.items():
                needs.setdefault(kind, []).append(name)
        needs.setdefault("config", []).append(config)
        if "objective" in overrides:
            needs.setdefault("objective", []).append(overrides["objective"])
        if "model.variant" in overrides:
            needs.setdefault("model", []).append(overrides["model.variant"])
        name = cell_name([v.label for v in combo])
        cells.append(Cell(name, {a.name: v for a, v in zip(study.axes, combo)}, _spec(config, args), overrides, needs))
    names = [c.name for c in cells]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"study {study.name}: labels give duplicate cell names {dupes}; make the labels distinct")
    return cells


def select_cells(cells: list[Cell], pattern: str, study: str) -> list[Cell]:
    """The cells whose name matches the regex `pattern` (re.search); none is a one-line error listing a few."""
    if not pattern:
        return cells
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"--cells={pattern!r} is not a regular expression: {err}") from None
    chosen = [c for c in cells if regex.search(c.name)]
    if not chosen:
        raise ConfigError(f"--cells={pattern!r} matches none of the {len(cells)} cells of study {study} "
                          f"(e.g. {', '.join(c.name for c in cells[:3])})")
    return chosen


def check_available(cells: list[Cell], study: str) -> None:
    """A ConfigError for the first cell that needs an objective, model size or config file that is not there."""
    for cell in cells:
        missing = requirements.first_missing(cell.needs)
        if missing:
            raise ConfigError(f"study {study}: cell {cell.name} {missing}; select other cells with --cells=REGEX")


def _target(cell: Cell, cells: list[Cell], axis: str, label: str) -> Cell:
    """The cell equal to `cell` except for `label` on `axis`."""
    values = {a: v.label for a, v in cell.values.items()}
    values[axis] = label
    for other in cells:
        if {a: v.label for a, v in other.values.items()} == values:
            return other
    raise ConfigError(f"cell {cell.name}: {{cell:{axis}={label}}} names no cell of the grid")


def dependencies(cell: Cell, cells: list[Cell]) -> list[str]:
    """Names of the cells whose run directories this cell's overrides refer to (they run first)."""
    return [_target(cell, cells, axis, label).name for refs in cell.references().values()
            for axis, label in refs.items()]


def resolve_refs(cell: Cell, cells: list[Cell], root: str) -> dict:
    """The cell's overrides with every {cell:axis=label} replaced by that cell's run directory under `root`."""
    def substitute(value):
        if not isinstance(value, str):
            return value
        return CELL_REF_RE.sub(lambda m: f"{root.rstrip('/')}/{_target(cell, cells, *m.groups()).name}", value)
    return {k: substitute(v) for k, v in cell.overrides.items()}


def set_field(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
    """config.<key> = value (lists become tuples); a ConfigError names the field when the config has none."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ConfigError(f"{where}: the config has no field {key!r} (no {part!r} block)")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"{where}: the config has no field {key!r}")
    node[leaf] = tuple(value) if isinstance(value, list) else value


def resolve_config(cell: Cell, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """The cell's pretraining config: its config file with its arguments, then its overrides."""
    try:
        config = load_config_file(cell.spec)
    except (ValueError, OSError) as err:
        raise ConfigError(f"cell {cell.name}: {cell.spec} does not load: {str(err).splitlines()[0]}") from None
    for key, value in (cell.overrides if overrides is None else overrides).items():
        set_field(config, key, value, f"cell {cell.name}")
    return config


def format_flag(value: Any) -> str:
    """A config value as the text of --config.field=TEXT (tuples as '(a,b)', booleans lowercase)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(format_flag(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def pretrain_args(cell: Cell, workdir: str, overrides: dict) -> list[str]:
    """The arguments of `python -m mim_jax.pretrain` for this cell in `workdir`."""
    return [f"--config={cell.spec}", f"--workdir={workdir}",
            *(f"--config.{k}={format_flag(v)}" for k, v in overrides.items())]
