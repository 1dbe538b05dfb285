"""One path from a stage's config dataclass to its subcommand: flags, ``--config FILE``, validation, resume fields.

Every field of a config dataclass is declared with :func:`option`, whose metadata says what the CLI needs:

``help``
    one line for ``--help``; ``(default: X)`` is appended unless the text already says ``(default: ...)``.
``choices``
    the allowed values (of each element, for list fields). Checked for flags, config files and configs built in
    Python alike (:func:`check_choices`, called from each ``validate()``).
``resume``
    False when the field does not change the result (output folder, device, logging): ``--resume`` may then differ
    on it. :func:`resume_fields` lists the others; the distill fingerprint and the student checkpoint read it.
``aliases``
    deprecated spellings (``"--wd"``), accepted until release :data:`ALIASES_REMOVED_IN` with a one-line note on
    stderr that says so; a config file accepts them as keys too. A ``--no-x`` alias of a bool field sets it False; a
    list field's alias takes one value per use (the old repeated flag).
``flag``
    the flag's name when it differs from the field's (a field kept for the Python API and saved runs while the CLI
    uses the spelling shared by the other subcommands); a config file accepts either name.
``positional`` / ``metavar`` / ``required``
    a positional argument; the value's name in ``--help``; a field that must be given (as a flag or in the file).
``cli``
    False: no flag (a field only the Python API and config files set).

Precedence: the dataclass defaults < ``--config FILE`` (YAML or JSON, a mapping of field names) < flags given on the
command line. Flags are added with ``default=argparse.SUPPRESS``, so only the ones actually given reach the config.

One error style and one exit path for user errors: a bad flag value (argparse or ``validate()``) reads
``infer-fast <command>: error: --flag: expected ..., got ...`` (:func:`require` and :class:`Parser` write that form),
printed as one line by ``infer_fast.cli.main`` with exit status 2 -- never a traceback. "Off" is 0 for counts and
limits (``--stop-after 0``) and None only where a value is derived (``--image-size``: the dataset's).
This module sits on the lowest floor: it imports only the standard library (and yaml for YAML files).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

# What a field without a given key means (a plain dataclasses.field works too: an ordinary flag that affects resume).
_META_DEFAULTS = {"help": "", "choices": None, "resume": True, "aliases": (), "flag": None, "positional": False,
                  "metavar": None, "required": False, "cli": True}


# The release that drops the deprecated spellings (the package is 0.1.x); every deprecation note names it.
ALIASES_REMOVED_IN = "0.3"
# The data source of every command that trains or distils from data: a dataset root or an embedded dataset's name.
DATA_HELP = ("the data: a dataset root holding train/ and val/ (or test/) ImageFolder class folders, or `digits` "
             "(scikit-learn's embedded 8x8 digits, nothing downloaded)")


class ConfigError(ValueError):
    """A config value, file or input that cannot be used; the message names the flag (or file and key), what was
    expected and what was given. A ValueError, as every config check of the stages raises; ``infer_fast.cli.main``
    prints it as one line and exits with status 2."""


def require(ok: bool, flag: str, expected: str, got: Any) -> None:
    """Raise ``ConfigError("--flag: expected <expected>, got <got>")`` unless ``ok`` (the one message style)."""
    if not ok:
        raise ConfigError(f"{flag}: expected {expected}, got {got!r}")


def data_option(default: Any = None, **kw: Any) -> Any:
    """The data-source field of a command (``--data ROOT|digits``, old spelling ``--dataset``): one declaration
    for every command that reads data, so the flag, its help and its deprecated alias agree."""
    kw.setdefault("help", DATA_HELP)
    return option(default, metavar="ROOT|digits", aliases=("--dataset",), **kw)


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, help: str = "",
           choices: Sequence[Any] | None = None, resume: bool = True, aliases: Sequence[str] = (),
           flag: str | None = None, positional: bool = False, metavar: str | None = None, required: bool = False,
           cli: bool = True) -> Any:
    """A dataclass field carrying its CLI metadata (see the module docstring)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "resume": resume,
            "aliases": tuple(aliases), "flag": flag, "positional": positional, "metavar": metavar,
            "required": required, "cli": cli}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def _meta(f: dataclasses.Field) -> dict:
    unknown = set(f.metadata) - set(_META_DEFAULTS)
    if unknown:  # a misspelt key would silently do nothing
        raise TypeError(f"field {f.name!r}: unknown option metadata {sorted(unknown)}")
    return {**_META_DEFAULTS, **f.metadata}


def flag_of(f: dataclasses.Field) -> str:
    """The canonical flag of a field: ``--`` + its ``flag`` metadata or its name, underscores as dashes."""
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def resume_fields(cls: type) -> tuple[str, ...]:
    """Names of the fields that change a run's result (``resume`` metadata True), in declaration order: a resumed
    run must agree with the interrupted one on each of them."""
    return tuple(f.name for f in dataclasses.fields(cls) if _meta(f)["resume"])


def _base_type(tp: Any) -> tuple[type, bool]:
    """(element type, is_list) of a field annotation, ``X | None`` unwrapped."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line in the house style (``<prog>: error: --flag: expected
    ..., got ...``, exit 2) instead of the usage block; ``--help`` still prints the usage. Subparsers inherit it."""

    def error(self, message: str) -> typing.NoReturn:
        message = message.removeprefix("argument ")
        choice = re.fullmatch(r"(.*): invalid choice: (.*) \(choose from (.*)\)", message)
        if choice:  # a subcommand name (the values of fields are checked by their type, _value_type)
            message = f"{choice[1]}: expected one of {choice[3].replace(chr(39), '')}, got {choice[2]}"
        self.exit(2, f"{self.prog}: error: {message}\n")


def _value_type(tp: type, choices: tuple | None) -> Callable[[str], Any]:
    """The argparse ``type`` of a field: parses one value, checks it against ``choices``, and says what it expected
    in the house style (argparse adds the flag)."""

    def parse(text: str) -> Any:
        try:
            value = tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {tp.__name__}, got {text!r}") from None
        if choices is not None and value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, choices))}, got {text!r}")
        return value

    parse.__name__ = tp.__name__
    return parse


class _Deprecated(argparse.Action):
    """An old spelling: parses as it used to, and says once per use which spelling replaces it."""

    def __init__(self, option_strings: list[str], dest: str, canonical: str, append: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.canonical, self.append = canonical, append

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"infer-fast: {option_string} is deprecated, use {self.canonical} ({option_string} is removed in "
              f"{ALIASES_REMOVED_IN})", file=sys.stderr)
        if self.nargs == 0:
            values = self.const
        elif self.append:
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                  config_file: bool = True) -> None:
    """Add one flag (or positional) per field of ``cls``, its deprecated aliases, and ``--config FILE``. ``parser``
    may be an argument group; two dataclasses on one parser must not share a field name (both would set it)."""
    if config_file:
        parser.add_argument("--config", metavar="FILE",
                            help=f"YAML or JSON file with {cls.__name__} fields (flags given here override it)")
    taken = {a.dest for a in parser._actions}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        m = _meta(f)
        if not m["cli"]:
            continue
        if f.name in taken:
            raise TypeError(f"{cls.__name__}.{f.name}: another option of this parser already sets {f.name!r}")
        tp, is_list = _base_type(hints[f.name])
        help_text = m["help"]
        if m["required"]:
            help_text = f"{help_text} (required)".strip()
        elif not m["positional"] and "(default:" not in help_text:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            help_text = f"{help_text} (default: {default!r})".strip()
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if m["metavar"] or m["flag"]:  # argparse would name the value after the field, not the flag
            kw["metavar"] = m["metavar"] or m["flag"].split("-")[-1].upper()
        elif m["choices"] is not None:  # the choices are checked by the type (one message style), shown here
            kw["metavar"] = "{" + ",".join(map(str, m["choices"])) + "}"
        value_type = _value_type(tp, m["choices"])
        if m["positional"]:
            parser.add_argument(f.name, type=value_type, **kw)
            continue
        flag = flag_of(f)
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, **kw)
        elif is_list:  # extend: a repeated flag adds to the list, as the old repeated spelling did
            parser.add_argument(flag, dest=f.name, nargs="+", action="extend", type=value_type, **kw)
        else:
            parser.add_argument(flag, dest=f.name, type=value_type, **kw)
        for alias in m["aliases"]:
            old: dict[str, Any] = {"dest": f.name, "action": _Deprecated, "default": argparse.SUPPRESS,
                                   "help": argparse.SUPPRESS}
            if tp is bool:
                negated = alias.startswith("--no-")
                old.update(nargs=0, const=not negated, canonical=f"--no-{flag[2:]}" if negated else flag)
            else:
                old.update(type=value_type, canonical=flag, append=is_list)
            parser.add_argument(alias, **old)


def to_argv(cfg: Any, skip: Sequence[str] = ()) -> list[str]:
    """The command-line flags that rebuild ``cfg`` from the defaults: every CLI field whose value differs from its
    default, in declaration order (the inverse of :func:`config_from_args`, e.g. for a printed torchrun command)."""
    argv: list[str] = []
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        m = _meta(f)
        if not m["cli"] or f.name in skip:
            continue
        value = getattr(cfg, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default and not m["positional"]:
            continue
        tp, is_list = _base_type(hints[f.name])
        if m["positional"]:
            argv.append(str(value))
        elif tp is bool:
            argv.append(flag_of(f) if value else f"--no-{flag_of(f)[2:]}")
        elif is_list:
            argv += [flag_of(f), *map(str, value)]
        elif value is not None:
            argv += [flag_of(f), str(value)]
    return argv


def _coerce(f: dataclasses.Field, tp: Any, value: Any, where: str) -> Any:
    """A config-file value as the field's type: a string is parsed as its flag would parse it."""
    base, is_list = _base_type(tp)
    name = f"{where}: {f.name}"
    if value is None:
        if type(None) in typing.get_args(tp):
            return None
        raise ConfigError(f"{name}: expected {base.__name__}, got null")
    if is_list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{name}: expected a list of {base.__name__}, got {value!r}")
        return [_coerce_one(name, base, v) for v in items]
    return _coerce_one(name, base, value)


def _coerce_one(name: str, base: type, value: Any) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base in (int, float) and isinstance(value, str):
        try:
            return base(value)
        except ValueError:
            pass
    elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    elif isinstance(value, base) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{name}: expected {base.__name__}, got {value!r}")


def load_config_file(path: str, cls: type) -> dict[str, Any]:
    """The fields a YAML or JSON config file sets (dashes in keys read as underscores), typed and checked."""
    where = f"--config {path}"
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no such file")
    with open(path) as fh:
        text = fh.read()
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json and yaml raise their own error types; both get this message
        raise ConfigError(f"{where}: not valid {'JSON' if path.endswith('.json') else 'YAML'} ({exc})") from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    by_key, old_keys = {}, {}
    for f in dataclasses.fields(cls):
        by_key[f.name] = by_key[flag_of(f)[2:].replace("-", "_")] = f
        for alias in _meta(f)["aliases"]:  # an old spelling (a --no-x alias of a bool reads as the field itself)
            old = alias.removeprefix("--").removeprefix("no-").replace("-", "_")
            if old not in by_key:
                by_key[old], old_keys[old] = f, flag_of(f)[2:].replace("-", "_")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        f = by_key.get(str(key).replace("-", "_"))
        if str(key).replace("-", "_") in old_keys:
            new = old_keys[str(key).replace("-", "_")]
            print(f"infer-fast: {where}: {key} is deprecated, use {new} ({key} is removed in {ALIASES_REMOVED_IN})",
                  file=sys.stderr)
        if f is None:
            raise ConfigError(f"{where}: unknown field {key!r}; {cls.__name__} fields are "
                              f"{', '.join(sorted(x.name for x in dataclasses.fields(cls)))}")
        values[f.name] = _coerce(f, hints[f.name], value, where)
        _check_choice(f, values[f.name], f"{where}: {f.name}")
    return values


def values_from_args(args: argparse.Namespace, cls: type, config_file: bool = True) -> dict[str, Any]:
    """The fields set by ``--config FILE`` (if given and ``config_file``: the file holds ``cls``'s fields), then by
    the flags given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    config = getattr(args, "config", None) if config_file else None
    values = load_config_file(config, cls) if config else {}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)``, checked: required fields present, then ``validate()`` (choices and ranges)."""
    missing = [flag_of(f) for f in dataclasses.fields(cls) if _meta(f)["required"] and f.name not in values]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: expected a value (as a flag or a field of --config), got none")
    cfg = cls(**values)
    try:
        if hasattr(cfg, "validate"):
            cfg.validate()
        else:
            check_choices(cfg)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return cfg


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """The config of a parsed subcommand: defaults < ``--config FILE`` < explicit flags, validated."""
    return build_config(cls, values_from_args(args, cls))


def _check_choice(f: dataclasses.Field, value: Any, name: str) -> None:
    choices = _meta(f)["choices"]
    if choices is None or value is None:
        return
    bad = [v for v in (value if isinstance(value, list) else [value]) if v not in choices]
    if bad:
        raise ConfigError(f"{name}: expected one of {', '.join(map(str, choices))}, got {bad[0]!r}")


def check_choices(cfg: Any, command: str = "") -> None:
    """Every field with ``choices`` holds one of them (the check ``validate()`` shares with the CLI); ``command``
    prefixes the message."""
    for f in dataclasses.fields(cfg):
        _check_choice(f, getattr(cfg, f.name), f"{command}: {flag_of(f)}" if command else flag_of(f))


def add_command(subparsers: argparse._SubParsersAction, name: str, cls: type,
                run: Callable[[Any, argparse.Namespace], int | None],
                build: Callable[[argparse.Namespace], Any] | None = None, **parser_kw: Any) -> argparse.ArgumentParser:
    """Subcommand ``name`` with the flags of ``cls`` and ``--config``. Running it builds the config with ``build``
    (default: :func:`config_from_args`; a ConfigError reaches ``infer_fast.cli.main``, which prints it as one line)
    and returns ``run(cfg, args)``. Flags that are not fields (``--quick``) are added to the returned parser."""
    p = subparsers.add_parser(name, **parser_kw)
    add_arguments(p, cls)

    def func(args: argparse.Namespace) -> int | None:
        cfg = build(args) if build is not None else config_from_args(args, cls)
        return run(cfg, args)

    p.set_defaults(func=func, command_prog=p.prog, config_class=cls)
    return p
