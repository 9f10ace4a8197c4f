"""MkDocs hook: include generated files (benchmark tables) only when they exist.

A page line ``<!-- include-if-exists: PATH | COMMAND -->`` (PATH relative to the repository root;
indented, e.g. inside a ``??? note`` block, it keeps its indentation)
becomes the ``pymdownx.snippets`` include ``--8<-- "PATH"`` when the file exists, and a short note
saying which command produces it otherwise, so ``mkdocs build --strict`` passes on a checkout where
the benchmarks have not been run yet.
"""

from __future__ import annotations

import re
from pathlib import Path

_MARKER = re.compile(r"^(?P<indent>[ \t]*)<!--\s*include-if-exists:\s*(?P<path>[^|]+?)\s*\|\s*(?P<cmd>.+?)\s*-->\s*$", re.M)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (MkDocs hook signature)
    root = Path(config["config_file_path"]).parent

    def replace(m: re.Match) -> str:
        indent, path, cmd = m["indent"], m["path"], m["cmd"]
        if (root / path).is_file():
            return f'{indent}--8<-- "{path}"'  # snippets indents the included lines like this one
        note = (f'!!! note "Not generated yet"\n    `{path}` does not exist in this checkout. '
                f"Produce it with\n\n    ```bash\n    {cmd}\n    ```\n")
        return "\n".join(indent + line if line else line for line in note.split("\n"))

    return _MARKER.sub(replace, markdown)
