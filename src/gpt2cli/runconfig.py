"""One TOML file per run: every stage's settings in one place, so a run is reproducible from that file.

A table per command, named as on the command line (`[dedupe]`, `[train-bpe]`, `[eval.zero-shot]`), holds
option values by the option's long name (`vocab_size = 4096` or `vocab-size = 4096`, `task = [...]` for `--task`).
They become the command's defaults (click's ``default_map``), so an option on the command line still wins.

Every command that reads the file checks that it parses and that its tables name commands; the keys and values
of a table are checked by its own command only (a typo in [dedupe] fails `gpt2 dedupe`, not `gpt2 artifacts ls`),
and by `gpt2 refresh` for its stages' tables before its first stage (``Tables.check``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import GenericAlias
from typing import Any

from gpt2cli.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# how one invocation behaves, not what the run computes: typed on the command line, never a run setting
INVOCATION_OPTIONS = ("home", "json", "force", "wait")


def read_run_config(path: Path) -> dict[str, Any]:
    try:  # a byte order mark (Windows editors write one) is not TOML, nor part of the file's text
        return tomllib.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise UsageError(f"cannot read the run config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{path}: not UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start}); TOML is UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None


def default_map(path: Path, root: Any) -> Tables:
    """The ``default_map`` for ``root`` (typer's click group) from the run config at ``path``; a table that names
    no command is a usage error at once, a key or value its command does not take when that command runs."""
    return Tables(read_run_config(path), root, str(path), ())


def settable_keys(command: Any) -> dict[str, Any]:
    """The keys a command's table takes (its options' long names, ``-`` as ``_``) -> the parameter."""
    keys = {}
    for param in command.params:
        if param.param_type_name == "option":
            for flag in param.opts:
                key = flag[2:].replace("-", "_")
                if flag.startswith("--") and key not in INVOCATION_OPTIONS:
                    keys[key] = param
    return keys


def _misplaced(trail: tuple[str, ...], key: str, group: Any) -> str:
    """What to say of option ``key`` set in the table of group ``trail`` (which holds its commands' tables)."""
    group_name = ".".join(trail)
    tables = [f"[{group_name}.{name}]" for name in sorted(group.commands)]
    takers = [f"[{group_name}.{name}]" for name, command in sorted(group.commands.items())
              if key.replace("-", "_") in settable_keys(command)]  # fmt: skip
    where = f"put {key} under {' or '.join(takers)}" if takers else f"no {group_name} command takes {key!r}"
    return f"[{group_name}] holds subcommand tables ({', '.join(tables)}), not options; {where}"


def from_run_config(ctx: Any, name: str) -> bool:
    """Whether parameter ``name`` of click context ``ctx`` has its value from the run config (the default_map),
    not the command line. Compared by name: typer bundles its own click, whose ParameterSource is not click's."""
    return getattr(ctx.get_parameter_source(name), "name", "") == "DEFAULT_MAP"


def run_config_origin(ctx: Any, message: str) -> str:
    """`` (from FILE [table] key)`` when ``message`` names an option whose value the failing command took from the
    run config (its long flag, or a string the table gave it); an option typed on the command line is never one."""
    table = getattr(ctx, "default_map", None)
    if ctx is None or not hasattr(table, "origin") or table.path in message:
        return ""
    by_flag, by_value = [], []
    for param in ctx.command.params:
        if param.name not in table or not from_run_config(ctx, param.name):
            continue
        flags = [flag for flag in param.opts if flag.startswith("--")]
        if any(re.search(rf"{re.escape(flag)}(?![\w-])", message) for flag in flags):
            by_flag.append(param.name)
            continue
        values = table[param.name] if isinstance(table[param.name], list) else [table[param.name]]
        strings = [v for v in values if isinstance(v, str) and v.strip()]  # a number could match anything
        if any(re.search(rf"(?<![\w@/.-]){re.escape(v)}(?![\w@/-])", message) for v in strings):
            by_value.append(param.name)
    named = by_flag or by_value
    return f" (from {table.origin(*named)})" if named else ""


class Tables(dict):  # type: ignore[type-arg]
    """click's ``default_map`` for a group: a table per subcommand. Click takes a subcommand's table with
    ``parent.default_map.get(name)`` as it makes that subcommand's context, so a table is checked only when its
    command runs."""

    def __init__(self, tables: dict[str, Any], group: Any, path: str, trail: tuple[str, ...]):
        self.path, self._group, self._trail = path, group, trail
        checked: dict[str, Any] = {}
        for name, value in tables.items():
            where = ".".join([*trail, name])
            sub = group.commands.get(name)
            if sub is None and trail and not isinstance(value, dict):  # `[eval] limit = 3`: a key, not a table
                raise UsageError(f"{path}: {_misplaced(trail, name, group)}")
            if sub is None:
                raise UsageError(f"{path}: [{where}] is not a command; commands: {', '.join(sorted(group.commands))}")
            if not isinstance(value, dict):
                raise UsageError(f"{path}: {where} must be a table of options")
            checked[name] = Tables(value, sub, path, (*trail, name)) if hasattr(sub, "commands") else value
        super().__init__(checked)

    def get(self, name: str, default: Any = None) -> Any:
        """Subcommand ``name``'s table (a usage error if it has a key that command does not take)."""
        if name not in self:
            return default
        value = self[name]
        if not isinstance(value, (Tables, Table)):
            value = self[name] = Table(value, self._group.commands[name], self.path, ".".join((*self._trail, name)))
        return value

    def check(
        self, name: str, args: tuple[str, ...] = (), validate: Callable[[dict[str, Any]], object] | None = None
    ) -> None:
        """Check subcommand ``name``'s table without running the command: its keys (as ``get``), its values
        parsed with ``args`` as click parses them when the command runs (each option's type, and the ranges click
        checks), then ``validate`` on the parsed values (the stage's own checks of its settings); a bad value is
        the usage error that command would end with."""
        import typer

        table = self.get(name)
        try:
            with self._group.commands[name].make_context(name, list(args), default_map=table) as ctx:
                if validate is not None:
                    try:
                        validate(ctx.params)
                    except UsageError as e:
                        raise UsageError(f"{e}{run_config_origin(ctx, str(e))}") from None
        except typer.TyperException as e:  # click's own errors, as `gpt2 <name>` would report them
            param, ctx = getattr(e, "param", None), getattr(e, "ctx", None)
            from_table = (
                param is not None
                and ctx is not None
                and getattr(ctx.get_parameter_source(param.name), "name", "") == "DEFAULT_MAP"
            )
            message = f"invalid value in {table.origin(param.name)}: {e.message}" if from_table else e.format_message()
            raise UsageError(" ".join(message.split())) from None


def _annotation(param: Any) -> Any:
    """The type an option's values have (a repeatable option's items: ``Path`` for ``list[Path]``)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, GenericAlias) and annotation.__origin__ is list:
        return annotation.__args__[0]
    return annotation


def _from_folder(folder: Path, value: Any) -> Any:
    """A run config's relative paths name files beside it, wherever the command runs from (cron starts in
    $HOME): ``dump = ["reddit/RS_2017-11.zst"]`` in ``data/sample/run.toml`` is ``data/sample/reddit/...``."""
    if isinstance(value, list):
        return [_from_folder(folder, v) for v in value]
    if not value:  # left for the option to refuse
        return value
    path = Path(value).expanduser()
    return value if path.is_absolute() else str(folder / path)


def _toml_type_problem(param: Any, value: Any) -> str | None:
    """What a TOML value must be where click's conversion is lenient: a flag takes ``true``/``false`` (not
    ``"yes"``), a number is no boolean (``max_steps = true`` is not 1), a name or path is a string
    (``tokenizer = 3`` is not ``"3"``). None when ``value`` is fine."""
    annotation = _annotation(param)
    values = value if isinstance(value, list) else [value]
    if annotation is bool and not all(isinstance(v, bool) for v in values):
        return "true or false"
    if annotation in (int, float) and any(isinstance(v, bool) for v in values):
        return "a number"
    if annotation in (str, Path) and not all(isinstance(v, str) for v in values):
        return "a string"
    return None


class Table(dict):  # type: ignore[type-arg]
    """One command's defaults by parameter name; ``origin`` names the file, table and key a value came from."""

    def __init__(self, values: dict[str, Any], command: Any, path: str, name: str):
        super().__init__()
        self.path, self.name, self._keys = path, name, {}
        settable = settable_keys(command)
        for key, value in values.items():
            param = settable.get(key.replace("-", "_"))
            if param is None:
                if key.replace("-", "_") in INVOCATION_OPTIONS:
                    raise UsageError(f"{path}: [{name}] {key!r} is not a run setting; give --{key} on the command line")
                raise UsageError(
                    f"{path}: [{name}] has no option {key!r}; its keys: {', '.join(sorted(settable)) or 'none'}"
                )
            if param.name in self._keys:
                raise UsageError(f"{path}: [{name}] sets {key} twice (as {self._keys[param.name]} and {key})")
            self._keys[param.name] = key
            if (expected := _toml_type_problem(param, value)) is not None:
                raise UsageError(f"{path}: [{name}] {key} must be {expected}, got {value!r}")
            if _annotation(param) is Path:
                value = _from_folder(Path(path).parent, value)
            repeatable = getattr(param, "multiple", False)  # `input = "a.txt"` means `input = ["a.txt"]`
            self[param.name] = [value] if repeatable and not isinstance(value, list) else value

    def origin(self, *param_names: str) -> str:
        """``FILE [table] key`` (keys joined by ``, `` for several parameters)."""
        return f"{self.path} [{self.name}] {', '.join(self._keys[name] for name in param_names)}"
