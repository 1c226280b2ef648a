"""Shared command-line plumbing: one argument/config parser for every script, and `run_main`, which turns a user
error into one line on stderr and exit status 2, never a traceback or a usage dump."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterable, Sequence

from trl import TrlParser

from capo.errors import DataError


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


class ArgumentParser(TrlParser):
    """`trl.TrlParser` whose every complaint is a located `DataError`: a bad or missing command-line value, an
    unknown flag, and a `--config` YAML that is missing, a folder, unreadable, malformed, not a mapping, or has a key
    that is no argument or a value of the wrong type (`file:line: field 'key': ...`). Also usable argparse-style
    (no dataclasses, `add_argument`, `parse_args`) by scripts with plain options."""

    def __init__(self, dataclass_types=None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(dataclass_types, **kwargs)
        self.code_defaults: dict = {}  # `parse_arguments(defaults=...)`: below the config and the command line

    def error(self, message: str):
        # argparse would print the whole usage text and exit 2; the user needs the one line that says what is wrong.
        raise DataError(_one_line(message))

    def parse_args_and_config(
        self,
        args: Iterable[str] | None = None,
        return_remaining_strings: bool = False,
        fail_with_unknown_args: bool = True,
        separate_remaining_strings: bool = False,
    ) -> tuple:
        args = list(sys.argv[1:] if args is None else args)
        args = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
        if args.count("--config") > 1:
            raise DataError("given more than once", field="--config")
        config = {}
        if "--config" in args:
            k = args.index("--config")
            if k + 1 == len(args) or args[k + 1].startswith("--"):
                raise DataError("expects a YAML file", field="--config")
            config = self.check_config(args[k + 1], allow_unknown=not fail_with_unknown_args)
        args = self._resolve_bf16(args, config)
        try:
            *parsed, from_config, from_cli = super().parse_args_and_config(
                args, return_remaining_strings=True, fail_with_unknown_args=fail_with_unknown_args,
                separate_remaining_strings=True,
            )
        except ValueError as err:  # a dataclass's __post_init__ (e.g. TrainingArguments) rejecting a combination
            raise DataError(_one_line(err)) from None
        if return_remaining_strings:
            return (*parsed, from_config, from_cli) if separate_remaining_strings else (*parsed, from_config + from_cli)
        if from_cli:
            raise DataError(f"unknown argument {from_cli[0]!r} (see --help)", field=from_cli[0].lstrip("-"))
        return tuple(parsed)

    def _has(self, dest: str) -> bool:
        return any(action.dest == dest for action in self._actions)

    def _resolve_bf16(self, args: list[str], config: dict) -> list[str]:
        """`bf16: auto` (the default here, where TRL's is true) -> bf16 only where the training device computes it
        natively (`capo.precision`), never beside fp16, and on a CPU only with `use_cpu` (transformers refuses bf16
        on a CPU otherwise); an explicit true still runs, with a warning where bf16 is emulated."""
        if not self._has("bf16"):
            return args
        import torch

        from capo.precision import resolve_bf16

        def flag(name: str, default) -> bool:
            return str(_cli_value(args, name, config.get(name.lstrip("-"), default))).lower() in ("true", "1", "yes")

        value = _cli_value(args, "--bf16", config.get("bf16", self.code_defaults.get("bf16", "auto")))
        if str(value).lower() == "auto" and (flag("--fp16", False)
                                             or not (flag("--use_cpu", False) or torch.cuda.is_available())):
            value = "false"
        resolved = str(resolve_bf16(value, "cpu" if flag("--use_cpu", False) else None)).lower()
        self._bf16_resolved = resolved == "true"
        kept = []
        skip = False
        for k, arg in enumerate(args):  # every --bf16 given (and its value) makes way for the resolved one
            if skip:
                skip = False
                continue
            if arg == "--bf16":
                skip = k + 1 < len(args) and not args[k + 1].startswith("--")
                continue
            if not arg.startswith("--bf16="):
                kept.append(arg)
        return [*kept, "--bf16", resolved]

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        if "bf16" in kwargs and self._has("bf16"):  # "auto" is no bool; the command line carries the resolved value
            kwargs["bf16"] = getattr(self, "_bf16_resolved", None)
        return super().set_defaults_with_config(**kwargs)

    def check_config(self, path: str, *, allow_unknown: bool = False) -> dict:
        """The YAML mapping at `path`, every key an argument of this parser (unless `allow_unknown`) and every value
        of its argument's type."""
        import yaml

        from capo.io import read_text

        text = read_text(path)
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            config = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            problem = getattr(err, "problem", None) or _one_line(err)
            raise DataError(f"malformed YAML: {problem}", path=path, line=mark.line + 1 if mark else None) from None
        if not isinstance(config, dict):
            got = "an empty file" if config is None else f"a {type(config).__name__}"
            raise DataError(f"expected a YAML mapping of argument names to values, got {got}", path=path)
        lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value}
        actions = {action.dest: action for action in self._actions if action.dest not in ("help", "config")}
        for key, value in config.items():
            where = {"path": path, "line": lines.get(str(key)), "field": str(key)}
            if key == "env":
                if not isinstance(value, dict):
                    raise DataError("expected a mapping of environment variables", **where)
                continue
            if key not in actions:
                if allow_unknown:
                    continue
                raise DataError(f"unknown key: not an argument of {self.prog}", **where)
            if key == "bf16" and str(value).lower() == "auto":
                continue
            _check_value(actions[key], value, where)
        return config


def _cli_value(args: Sequence[str], flag: str, default):
    """The value `flag` has on the command line (`--flag V`, `--flag=V`, or a bare `--flag`: true), else `default`."""
    value = default
    for k, arg in enumerate(args):
        if arg == flag:
            value = args[k + 1] if k + 1 < len(args) and not args[k + 1].startswith("--") else "true"
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _check_value(action: argparse.Action, value, where: dict) -> None:
    """A config value goes in as the argument's default, which argparse never type-checks unless it is a string."""
    convert = action.type
    if value is None or convert is None or convert is str:  # str-typed fields also take YAML dicts (json kwargs)
        return
    many = action.nargs in ("+", "*")
    if isinstance(value, (list, dict)) and not (many and isinstance(value, list)):
        raise DataError(f"expected a single value, got a {type(value).__name__}", **where)
    for one in value if isinstance(value, list) else [value]:
        if isinstance(one, (list, dict)):
            raise DataError(f"expected a single value, got a {type(one).__name__}", **where)
        if isinstance(one, bool) and convert in (int, float):
            raise DataError(f"expected a number, got {one!r}", **where)
        try:
            converted = convert(str(one))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            kind = getattr(convert, "__name__", "value").replace("string_to_bool", "true/false")
            raise DataError(f"invalid {kind} value {one!r}", **where) from None
        if action.choices is not None and converted not in action.choices:
            raise DataError(f"invalid choice {one!r} (valid: {', '.join(map(str, action.choices))})", **where)


class _Repeated(argparse.Action):
    """`--flag A --flag B` and `--flag A B` both give [A, B]; the first use on the command line replaces a `--config`
    list rather than adding to it (command line over config, as for every other option)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        kept = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, [*kept, *values])


def repeatable(help: str, **metadata) -> dict:
    """Field metadata of a `list[str]` option that is given once per value (`--generated a=x --generated b=y`, as
    argparse's `action="append"`): a dataclass list field is `nargs="+"`, whose second use would drop the first."""
    return {"action": _Repeated, "help": help, **metadata}


def named_values(specs: Sequence[str], field: str, *, what: str = "name", reserved: str = "") -> dict[str, str]:
    """`["capo=runs/g.jsonl"]` -> {"capo": "runs/g.jsonl"}: the one parser of NAME=VALUE options, names and values
    stripped, each name once (an output keyed by name would lose the first of two), none holding a `reserved`
    character; `what` names a name in the duplicate's message."""
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, value = str(spec).partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value or any(c in name for c in reserved):
            raise DataError(f"expected NAME=PATH, got {spec!r}", field=field)
        if name in named:
            raise DataError(f"{what} {name!r} given twice", field=field)
        named[name] = value
    return named


def parse_arguments(dataclass_types: Sequence[type], argv: Sequence[str] | None = None, *,
                    defaults: dict | None = None, prog: str | None = None, description: str | None = None) -> tuple:
    """The scripts' one way to read arguments: command line over `--config` YAML over `defaults` over the
    dataclasses' own defaults, every mistake a located one-line `DataError` (raised inside `run_main`). `prog` and
    `description` head `--help` (default: the name the script was started by, no description)."""
    parser = ArgumentParser(tuple(dataclass_types), prog=prog, description=description)
    parser.code_defaults = dict(defaults or {})
    if defaults and (unused := parser.set_defaults_with_config(**defaults)):
        raise TypeError(f"defaults that are no argument: {unused[::2]}")  # a programming error, not the user's
    return parser.parse_args_and_config(argv)


def run_main(main: Callable[..., object]) -> Callable[..., object]:
    """Decorate a script's `main`: DataError -> `error: <one line>` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
