"""Consent to configuration files that name code (``spectrum trust FILE``).

A ``spectrum.toml`` or ``pyproject.toml`` found beside a checkpoint is data: checkpoint
folders are downloaded from strangers. When such a file names code to import
(``model``, ``data``, or a ``loss`` written ``MODULE:NAME``) or a Dask scheduler to
connect to (``scheduler``, ``scheduler_file``: a cluster sends pickled results that are
unpickled in spectrum's process, so a scheduler is code too), spectrum uses it only if
the user consented to that exact file content, as ``direnv allow`` and ``mise trust``
do: ``spectrum trust FILE`` records the file's resolved path and the SHA-256 of its bytes
in ``$XDG_DATA_HOME/spectrum/trust.json`` (``~/.local/share/spectrum/trust.json``). Any
edit of the file withdraws the consent. Names given on the command line (``--model``,
``--data``, ``--loss``, ``--scheduler``, ``--scheduler-file``) or in ``SPECTRUM_*``
variables (the user's shell: ``SPECTRUM_SCHEDULER``, ...) are the user's own and need none.
There is no other user-level configuration file: a ``spectrum.toml`` is consented to by
its content, wherever it lies (beside the checkpoint, above the working directory, in
the home folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from spectrum_cli.core.errors import InputError

#: Configuration keys whose values are imported as code (``loss`` only as MODULE:NAME).
CODE_KEYS = ("model", "data", "loss")
#: Configuration keys that point spectrum at a Dask cluster, whose pickles run here.
SCHEDULER_KEYS = ("scheduler", "scheduler_file")
_MAX_CONFIG_BYTES = 1 << 20


def names_code(key: str, value: object) -> bool:
    """Whether the value of ``key`` names code to run in spectrum's process: a Python
    object to import, or a Dask scheduler (any non-empty value) whose results are
    unpickled here. Such a value needs consent when a configuration file gives it."""
    if key in SCHEDULER_KEYS:
        return value is not None and value != ""
    return key in CODE_KEYS and isinstance(value, str) and ":" in value


def store_path() -> Path:
    """Where consents are recorded (XDG base directory specification)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".local", "share")
    return Path(base) / "spectrum" / "trust.json"


def digest(path: str | os.PathLike) -> str:
    """SHA-256 of a configuration file's bytes (a regular file of at most 1 MiB)."""
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p}: not a regular file")
        if st.st_size > _MAX_CONFIG_BYTES:
            raise InputError(f"{p}: {st.st_size} bytes is too large for a configuration file")
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None


def _load() -> dict[str, str]:
    try:
        data = json.loads(store_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no store yet, or a damaged one: nothing is trusted
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("trusted"), dict):
        return {}
    return {k: v for k, v in data["trusted"].items()
            if isinstance(k, str) and isinstance(v, str)}


def _save(trusted: dict[str, str]) -> None:
    target = store_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"trusted": trusted}, indent=1, sort_keys=True) + "\n",
                       encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        raise InputError(f"{target}: cannot record the consent ({exc.strerror or exc})") \
            from None


def is_trusted(path: str | os.PathLike) -> bool:
    """Whether the user consented to this file with its current content."""
    key = str(Path(path).resolve())
    recorded = _load().get(key)
    return recorded is not None and recorded == digest(key)


def trust(path: str | os.PathLike) -> str:
    """Record consent to ``path`` as it is now; returns its SHA-256."""
    key = str(Path(path).resolve())
    sha = digest(key)
    trusted = _load()
    trusted[key] = sha
    _save(trusted)
    return sha


def revoke(path: str | os.PathLike) -> bool:
    """Withdraw consent to ``path``; whether there was one."""
    key = str(Path(path).resolve())
    trusted = _load()
    found = trusted.pop(key, None) is not None
    if found:
        _save(trusted)
    return found


def trusted_files() -> dict[str, str]:
    """Every recorded consent: resolved path -> SHA-256."""
    return _load()
