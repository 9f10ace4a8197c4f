"""Every private Lightning name the package relies on still exists (``gddim_lightning/_lightning_private.py``).

A Lightning upgrade that renames or removes one fails here, naming it, instead of somewhere deep in
a fit. The package itself uses only public Lightning and jsonargparse API outside that module."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from gddim_lightning import _lightning_private as private

PACKAGE = Path(private.__file__).resolve().parent


def _owner(owner):
    if owner == "fit_loop":
        return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False).fit_loop
    return owner


@pytest.mark.parametrize("owner, name", private.PRIVATE_NAMES, ids=[n for _, n in private.PRIVATE_NAMES])
def test_private_name_still_exists(owner, name):
    obj = _owner(owner)
    where = owner if isinstance(owner, str) else owner.__qualname__
    assert hasattr(obj, name), (
        f"Lightning no longer has {where}.{name}, which gddim_lightning/_lightning_private.py uses; find its "
        "replacement in the new Lightning version and update that module (its docstrings say what each access "
        "is for)")


def test_lightning_cli_still_calls_the_overridden_hook():
    """`CheckpointHparamsOverride` replaces `_parse_ckpt_path`: LightningCLI must still call it after parsing."""
    source = inspect.getsource(LightningCLI.__init__)
    assert "self._parse_ckpt_path()" in source, (
        "LightningCLI.__init__ no longer calls self._parse_ckpt_path(): GDDIMCLI.apply_checkpoint_hparams would "
        "silently stop running (checkpoint hyperparameters not applied); see gddim_lightning/_lightning_private.py")


@pytest.mark.parametrize("name", ["_should_skip_saving_checkpoint", "_monitor_candidates", "_save_last_checkpoint"])
def test_model_checkpoint_private_signatures(name):
    params = list(inspect.signature(getattr(ModelCheckpoint, name)).parameters)
    expected = ["self", "trainer", "monitor_candidates"] if name == "_save_last_checkpoint" else ["self", "trainer"]
    assert params == expected, f"ModelCheckpoint.{name} now takes {params}, not {expected}: update _lightning_private.py"


def test_no_private_lightning_access_outside_the_module():
    """Outside `_lightning_private.py`, no attribute ``._name`` of a Lightning object and no import of a
    private Lightning module or name (``self._x`` of the package's own classes is fine)."""
    private_names = {name for _, name in private.PRIVATE_NAMES}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_lightning_private.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning"):
                parts = (node.module or "").split(".") + [a.name for a in node.names]
                if any(p.startswith("_") for p in parts):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {node.module}")
            if isinstance(node, ast.Attribute) and node.attr in private_names:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses .{node.attr}")
            if isinstance(node, ast.FunctionDef) and node.name in private_names:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} overrides {node.name}")
    assert not offenders, "private Lightning access outside _lightning_private.py:\n" + "\n".join(offenders)
