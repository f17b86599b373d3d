"""HF Trainer's ``trainer_state.json``: the global step and the last logged loss."""

from __future__ import annotations

import json
import os
from typing import Any

from spectrum_cli.core.errors import InputError
from spectrum_cli.io import storage
from spectrum_cli.io.base import open_regular, stored_loss, stored_step

_MAX_TRAINER_STATE = 64 << 20


def trainer_state_scalars(path: str | os.PathLike) -> dict[str, Any]:
    """``global_step`` and the last logged ``loss`` at or before it from an HF
    ``trainer_state.json`` (a local path or a URL); ValueError says what is wrong with a
    damaged one."""
    try:
        with open_regular(os.fspath(path)) as fh:
            blob = fh.read(_MAX_TRAINER_STATE + 1)
    except (OSError, InputError) as exc:
        raise ValueError(f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(blob) > _MAX_TRAINER_STATE:
        raise ValueError(f"larger than {_MAX_TRAINER_STATE >> 20} MiB")
    try:
        state = json.loads(blob)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not JSON: {type(exc).__name__}") from None

    step = stored_step(state.get("global_step")) if isinstance(state, dict) else None
    if step is None:  # missing, negative, beyond int64, not a number
        raise ValueError("no global_step from 0 to 2**63-1")
    history = state.get("log_history", [])
    if not isinstance(history, list):
        raise ValueError("log_history is not a list")
    logged = [e for e in history if isinstance(e, dict)
              and stored_loss(e.get("loss")) is not None
              and (s := stored_step(e.get("step", 0))) is not None and s <= step]
    out: dict[str, Any] = {"step": step, "from": "trainer_state.json"}
    if logged:
        out["loss"] = stored_loss(logged[-1]["loss"])
    return out


def checkpoint_scalars(source: Any, warnings: list[str] | None = None) -> dict[str, Any]:
    """Step and loss stored in a training checkpoint's top level, or in an HF
    ``trainer_state.json`` beside the weights (its last logged loss at or before the
    checkpoint's global step). A damaged ``trainer_state.json`` is ignored with a
    warning: the scalars are a courtesy, the weights are the analysis."""
    out: dict[str, Any] = {}
    folder = source.path if storage.pisdir(source.path) else storage.pdirname(source.path)
    state_file = storage.pjoin(folder, "trainer_state.json")
    present = (storage.exists(state_file) if storage.is_url(state_file)
               else os.path.isfile(state_file))  # a FIFO or a folder of that name: no
    if present:
        try:
            out.update(trainer_state_scalars(state_file))
        except ValueError as exc:
            if warnings is not None:
                warnings.append(f"{state_file}: ignored ({exc})")
    stored = source.scalars()
    if "step" not in out and "step" in stored:
        out["step"] = stored["step"]
    if "loss" in stored:
        out["loss"] = stored["loss"]
    return out


