"""Checks of a ``--config`` file before jsonargparse reads it, and of the parsed config after.

jsonargparse's own messages for a config that is not UTF-8, not YAML or not a mapping name neither
the file nor the fix; a YAML alias bomb would expand without bound; a ``???`` placeholder (a value
the user must set) would reach a constructor. Each is one error here, naming the file or the key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from ..limits import MAX_CONFIG_NODES

__all__ = ["PLACEHOLDER", "check_config_file", "config_paths", "placeholders"]

PLACEHOLDER = "???"  # a config value the user must set (e.g. the CIFAR-10 root)


def config_paths(argv: Sequence[str]) -> list[str]:
    """The existing files given as ``-c PATH``, ``--config PATH`` or ``--config=PATH`` in ``argv``."""
    paths = []
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg in ("-c", "--config") and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if path is not None and Path(path).is_file():
            paths.append(path)
    return paths


def _walk(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yields ``(dotted key, leaf value)`` of a parsed config (namespaces, dicts and lists)."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def placeholders(cfg: Any) -> list[str]:
    """Dotted keys of ``cfg`` whose value is still `PLACEHOLDER`."""
    return [key for key, value in _walk(cfg) if value == PLACEHOLDER]


def _expanded_nodes(node: yaml.Node, limit: int) -> int:
    """Number of values ``node`` stands for once its aliases are expanded (stops counting past ``limit``)."""
    sizes: dict[int, int] = {}
    stack = [(node, False)]
    while stack:
        cur, done = stack.pop()
        if id(cur) in sizes:
            continue
        children = ([c for kv in cur.value for c in kv] if isinstance(cur, yaml.MappingNode) else
                    list(cur.value) if isinstance(cur, yaml.SequenceNode) else [])
        if done or not children:
            sizes[id(cur)] = min(limit + 1, 1 + sum(sizes.get(id(c), 0) for c in children))
        else:
            stack.append((cur, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(node)]


def check_config_file(parser: Any, path: str) -> None:
    """``parser.error`` (exit 2) naming ``path`` if it is not UTF-8 text, not YAML, expands past
    `MAX_CONFIG_NODES` values, or is not a mapping of sections."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_nodes(root, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
            parser.error(f"--config {path}: expands to more than {MAX_CONFIG_NODES} values once its YAML aliases "
                         "(*name) are resolved (gddim_lightning.limits.MAX_CONFIG_NODES); a config is a few hundred "
                         "values: remove the aliases that repeat large blocks")
        data = yaml.safe_load(text)
    except UnicodeDecodeError as err:
        parser.error(f"--config {path}: not a UTF-8 text file ({err.reason} at byte {err.start}); a config is a "
                     "YAML file such as configs/cld.yaml")
    except yaml.MarkedYAMLError as err:
        where = err.problem_mark
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        parser.error(f"--config {path}: not valid YAML{at}: {err.problem or type(err).__name__}")
    except yaml.YAMLError as err:  # e.g. ReaderError (a control character): no position or problem fields
        parser.error(f"--config {path}: not valid YAML: {(str(err).splitlines() or [type(err).__name__])[0]}")
    if not isinstance(data, dict):
        what = "an empty file" if data is None else f"a {type(data).__name__}"
        parser.error(f"--config {path}: expected a YAML mapping of sections (model:, data:, trainer:, ...), "
                     f"got {what}")
