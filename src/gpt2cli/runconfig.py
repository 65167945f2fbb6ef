"""One TOML file per run: every stage's settings in one place, so a run is reproducible from that file.

A table per command, named as on the command line (`[dedupe]`, `[train-bpe]`, `[eval.zero-shot]`), holds
option values by option name (`vocab_size = 4096`, `vocab-size = 4096`, `task = [...]` for `--task`).
They become the command's defaults (click's ``default_map``), so an option on the command line still wins.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gpt2cli.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_run_config(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read the run config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None


def default_map(path: Path, root: Any) -> dict[str, Any]:
    """The ``default_map`` for ``root`` from the run config at ``path``; unknown commands or options are
    usage errors (a typo must not silently fall back to a default)."""
    return _tables(read_run_config(path), root, str(path), [])


def _tables(tables: dict[str, Any], command: Any, path: str, trail: list[str]) -> dict[str, Any]:
    """``command`` is a click command or group (typer's own click); groups have ``commands``."""
    out: dict[str, Any] = {}
    for name, value in tables.items():
        where = ".".join([*trail, name])
        commands = getattr(command, "commands", None)
        if commands is not None:
            sub = commands.get(name)
            if sub is None:
                raise UsageError(f"{path}: [{where}] is not a command; commands: {', '.join(sorted(commands))}")
            if not isinstance(value, dict):
                raise UsageError(f"{path}: {where} must be a table of options")
            out[name] = _tables(value, sub, path, [*trail, name])
            continue
        options = {}  # the flag's name (--task -> task) or the parameter's (tasks) -> the parameter
        for param in command.params:
            if param.param_type_name == "option":
                options[param.name] = param
                for flag in param.opts:
                    options.setdefault(flag.lstrip("-").replace("-", "_"), param)
        key = name.replace("-", "_")
        if key not in options:
            shown = sorted({n for n in options if not n.startswith("no_")} - {"home", "as_json"})
            raise UsageError(f"{path}: [{'.'.join(trail)}] has no option {name!r}; options: {', '.join(shown)}")
        param = options[key]
        repeatable = getattr(param, "multiple", False)  # `input = "a.txt"` means `input = ["a.txt"]`
        out[param.name] = [value] if repeatable and not isinstance(value, list) else value
    return out
