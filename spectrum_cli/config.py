"""Configuration: command line > ``SPECTRUM_*`` environment > file > defaults.

The file is the nearest ``spectrum.toml`` (top-level keys) or ``pyproject.toml`` with a
``[tool.spectrum]`` table, searching upwards from the checkpoint's folder, then from the
working directory, each search stopping at a repository root (a folder holding ``.git``). Keys may be written ``snake_case``
or ``kebab-case``. Loading safety can never come from here: ``trust_checkpoint`` and
``allow_global`` in a file or the environment are an error, not a silent no-op.

Code named by a file (``model``, ``data``, a ``loss`` written MODULE:FN) and a Dask
scheduler named by a file (``scheduler``, ``scheduler_file``: the cluster's pickles are
loaded in this process) are used only when the user trusted that file's content with
``spectrum trust FILE`` (:mod:`spectrum_cli.trust`); the command line and ``SPECTRUM_*``
variables are the user's own. Every value, whatever its origin, is range-checked once
here (:func:`check_values`, the ranges of :mod:`spectrum_cli.settings`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from spectrum_cli import settings as S
from spectrum_cli import trust
from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.selection import compile_pattern
from spectrum_cli.settings import CONFIG_KEYS as KEYS  # noqa: E402  (one schema)
from spectrum_cli.settings import (
    FORBIDDEN,  # noqa: E402
    parse_size,
)

_MAX_CONFIG_BYTES = 1 << 20
#: Why a forbidden key is command line only, where the general reason does not fit.
_COMMAND_LINE_ONLY = {
    "on_alert": "a file found beside a checkpoint must not choose a command to run "
                "(give --on-alert on the command line)",
    "storage_option": "a file found beside a checkpoint must not point spectrum, and your "
                      "credentials, at another endpoint (give --storage-option on the "
                      "command line)",
}


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
        if len(raw) > _MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {_MAX_CONFIG_BYTES} bytes")
        return tomllib.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read configuration ({exc.strerror or exc})") \
            from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not a UTF-8 TOML file ({exc.reason} at byte "
                         f"{exc.start})") from None
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(f"{path}: not a valid TOML configuration "
                         f"({type(exc).__name__}: {exc})") from None


def _table(path: Path, value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{path}: {name} must be a table, got {type(value).__name__}")
    return value


def find_config(start: Path | None = None) -> tuple[Path | None, dict[str, Any]]:
    """The nearest configuration file and its ``spectrum`` table."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        st = d / "spectrum.toml"
        if st.is_file():
            return st, _load_toml(st)
        pp = d / "pyproject.toml"
        if pp.is_file():
            tool = _table(pp, _load_toml(pp).get("tool", {}), "[tool]")
            table = tool.get("spectrum")
            if table is not None:
                return pp, _table(pp, table, "[tool.spectrum]")
        if (d / ".git").exists():
            break
    return None, {}


def read_table(path: Path) -> dict[str, Any]:
    """The ``spectrum`` settings of one configuration file: a ``spectrum.toml``'s top
    level or a ``pyproject.toml``'s ``[tool.spectrum]`` table (empty if it has none)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: not a regular file")
    data = _load_toml(path)
    if path.name == "pyproject.toml":
        return _table(path, _table(path, data.get("tool", {}), "[tool]").get("spectrum", {}),
                      "[tool.spectrum]")
    return data


def _coerce(key: str, value: Any, where: str) -> Any:
    """A file's or variable's value as the setting's kind (ranges are checked later, for
    every origin alike, by :func:`check_values`); UsageError naming ``where``."""
    kind = KEYS[key]
    try:
        if kind == "list":
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()] if key != "fail_on" \
                    else [value]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            if key == "eps" and isinstance(value, list) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                return [str(v) for v in value]
            raise TypeError("expected a list of strings")
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float)
                                           and not value.is_integer()):
                raise TypeError("expected an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError("expected a number")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false",
                                                             "no"):
                return value.lower() in ("1", "true", "yes")
            raise TypeError("expected true or false")
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{where}: expected {S.expected(S.BY_NAME[key])}, got "
                         f"{S.shown(value)}") from None


def _normalize(table: Mapping[str, Any], origin: str, strict: bool = True) -> dict[str, Any]:
    out = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_").lower()
        if key in FORBIDDEN:
            why = _COMMAND_LINE_ONLY.get(key, "unsafe loading is only enabled from the "
                                         "command line (--trust-checkpoint, --allow-global)")
            raise UsageError(f"{origin}: {raw_key!r} cannot be set in a configuration file "
                             f"or the environment; {why}")
        if key not in KEYS:
            if not strict:  # unrelated SPECTRUM_* variables are not ours to judge
                continue
            raise UsageError(f"{origin}: unknown key {raw_key!r}; known: {', '.join(KEYS)}")
        where = f"SPECTRUM_{raw_key}" if origin.startswith("environment") else \
            f"{origin}: {raw_key}"
        out[key] = _coerce(key, value, where)
    return out


@dataclass
class Config:
    """Resolved values and where each came from (for ``--show-config`` and reports).
    Values are range-checked on construction (:func:`check_values`), so that the Python
    API's ``use_config=False`` path is held to the same ranges as the command line."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    file: str | None = None

    def __post_init__(self) -> None:
        check_values(self)


def _where(key: str, origin: str) -> str:
    """How a message names a setting: its flag when given on the command line (or the
    API), else the file or variable and the key."""
    if origin == "command line":
        return S.BY_NAME[key].flag
    if origin.startswith("SPECTRUM_"):
        return origin
    return f"{origin}: {key}"


def check_values(cfg: Config) -> None:
    """Every value within its setting's range (:func:`spectrum_cli.settings.check`), sizes
    parsed, ``include``/``exclude`` patterns compiled with the bounded matcher: a
    UsageError naming the setting, what was expected and what was given."""
    for key, value in list(cfg.values.items()):
        setting = S.BY_NAME.get(key)
        if setting is None:
            continue
        where = _where(key, cfg.origins.get(key, "command line"))
        try:
            value = S.check(setting, value)
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None
        if key in S.SIZES and value is not None:
            _check_size(where, setting, value)
        if key in ("include", "exclude", "params") and value:
            for pattern in value:
                compile_pattern(pattern, where)
        cfg.values[key] = value


def _check_size(where: str, setting: Any, value: str) -> None:
    try:
        size = parse_size(value, where)
    except (OverflowError, ValueError):
        size = None
    if size is None or not 0 < size <= S.MAX_SIZE:
        raise UsageError(f"{where}: expected {S.expected(setting)}, got {S.shown(value)}")


def resolve(cli: Mapping[str, Any], environ: Mapping[str, str] | None = None,
            start: Path | None = None, near: Path | None = None) -> Config:
    """Merge ``cli`` (None or empty list = not given) over environment and file. The file
    is searched from ``near`` (the checkpoint's folder) first, then from ``start`` (the
    working directory)."""
    environ = os.environ if environ is None else environ
    path, table = find_config(near) if near is not None else (None, {})
    if path is None:
        path, table = find_config(start)
    file_values = _normalize(table, str(path)) if path else {}
    env_table = {k[len("SPECTRUM_"):]: v for k, v in environ.items()
                 if k.startswith("SPECTRUM_")}
    env_values = _normalize(env_table, "environment (SPECTRUM_*)", strict=False)
    cfg = Config(file=str(path) if path else None)
    for key in KEYS:
        given = cli.get(key)
        if given is not None and given != [] and given != ():
            cfg.values[key], cfg.origins[key] = given, "command line"
        elif key in env_values:
            cfg.values[key], cfg.origins[key] = env_values[key], f"SPECTRUM_{key.upper()}"
        elif key in file_values:
            cfg.values[key], cfg.origins[key] = file_values[key], str(path)
    check_values(cfg)
    _require_consent(cfg)
    return cfg


def _require_consent(cfg: Config) -> None:
    """Refuse code named by a configuration file the user has not trusted (see
    :mod:`spectrum_cli.trust`): the file may have come with a downloaded checkpoint.
    Code is a module to import (``model``, ``data``, a ``loss`` written MODULE:FN) or a
    Dask scheduler (``scheduler``, ``scheduler_file``), whose cluster sends pickles that
    are loaded in this process. The command line and ``SPECTRUM_*`` variables (the
    user's own shell) need no consent; a file needs ``spectrum trust FILE``."""
    named = {k: v for k, v in cfg.values.items()
             if cfg.origins.get(k) == cfg.file and trust.names_code(k, v)}
    if not named or cfg.file is None or trust.is_trusted(cfg.file):
        return
    what = ", ".join(f"{k} = {v!r}" for k, v in named.items())
    flags = "/".join("--" + k.replace("_", "-") for k in named)
    cluster = [k for k in named if k in trust.SCHEDULER_KEYS]
    if cluster:
        head = (f"{cfg.file} names a Dask scheduler ({what}); nothing was contacted or "
                "imported. A cluster's results are unpickled in spectrum's process, so a "
                "scheduler is code, and a configuration file found beside a checkpoint "
                "may have come with it: it needs your consent.")
    else:
        head = (f"{cfg.file} names code to import ({what}); nothing was imported. A "
                "configuration file found beside a checkpoint may have come with it, so "
                "it needs your consent.")
    raise UsageError(
        f"{head} If you wrote it, trust this content once with: spectrum trust {cfg.file}  "
        f"(recorded by SHA-256; any edit needs a new consent), or give {flags} on the "
        "command line.")
