"""``torch.save`` files (zip and legacy), loaded weights-only and memory-mapped.

Safety (see docs/ecosystem.md): ``torch.load(weights_only=True)`` with torch >= 2.10. A
refusal is final: we list the offending globals with
``torch.serialization.get_unsafe_globals_in_checkpoint`` (a static disassembly, nothing
runs) and raise :class:`UnsafeCheckpointError`. Only the command line can widen the
allowlist (``--allow-global``) or turn safety off (``--trust-checkpoint``); we never retry
unsafely on our own.

Memory: zip files are opened with ``mmap=True, map_location="cpu"``, so a tensor's bytes
are paged in only when :meth:`TorchSource.read` touches it.
"""

from __future__ import annotations

import importlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from spectrum_cli.core.errors import InputError, UnsafeCheckpointError, UsageError
from spectrum_cli.io.base import LoadPolicy, SourceBase, TensorInfo

#: Keys under which training checkpoints keep the model's weights, in order of preference.
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")


def resolve_global(spec: str) -> Any:
    """``MODULE.NAME`` -> the object, for ``--allow-global`` (imports MODULE)."""
    module, _, name = spec.rpartition(".")
    if not module or not name:
        raise UsageError(f"--allow-global: expected MODULE.NAME, got {spec!r}")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--allow-global {spec}: cannot import it ({exc})") from None
    return obj


def _static_globals(path: str) -> list[str]:
    """Every global a (legacy or raw) pickle file names, by static disassembly with
    :mod:`pickletools`: nothing is unpickled. Legacy torch files hold several pickles."""
    import pickletools

    found: list[str] = []
    with open(path, "rb") as fh:
        for _ in range(8):
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(fh):
                    if op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # end of file, or bytes that are not a pickle
                break
    return found


def _unsafe_globals(path: str, message: str) -> list[str]:
    import torch

    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip file: disassemble it ourselves
        found = []
    if not found:
        try:
            from torch._weights_only_unpickler import _get_allowed_globals

            allowed = set(_get_allowed_globals())
        except Exception:  # private API moved: list everything rather than nothing
            allowed = set()
        found = [g for g in _static_globals(path) if g not in allowed]
    found = found or re.findall(r"GLOBAL ([\w.]+)", message)
    return sorted(set(found))


def _load(path: str, policy: LoadPolicy, is_zip: bool) -> Any:
    import torch

    kwargs: dict[str, Any] = {"map_location": "cpu", "mmap": is_zip}
    try:
        if policy.trust_checkpoint:
            return torch.load(path, weights_only=False, **kwargs)
        allowed = [resolve_global(g) for g in policy.allow_globals]
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        if policy.trust_checkpoint:
            raise InputError(f"{path}: corrupt pickle ({exc})") from None
        message = str(exc)
        if "Weights only load failed" not in message:
            raise InputError(f"{path}: corrupt or truncated torch checkpoint "
                             f"({message.splitlines()[0]})") from None
        detail = next((ln.strip() for ln in message.splitlines()
                       if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise UnsafeCheckpointError(path, _unsafe_globals(path, message), detail) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: corrupt or truncated torch checkpoint ({first})") from None


def _is_optimizer_state(obj: Mapping) -> bool:
    return "state" in obj and "param_groups" in obj


def _flatten(obj: Any, prefix: str, skip: str | None, out: dict[str, tuple[Any, str | None]]):
    import torch

    if isinstance(obj, (torch.Tensor, np.ndarray)):
        out[prefix] = (obj, skip)
    elif isinstance(obj, Mapping):
        if skip is None and _is_optimizer_state(obj):
            skip = "optimizer state"
        for key, value in obj.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), skip, out)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _flatten(value, f"{prefix}.{i}" if prefix else str(i), skip, out)
    elif hasattr(obj, "state_dict") and callable(obj.state_dict):  # a whole nn.Module
        _flatten(obj.state_dict(), prefix, skip, out)


def _pick_weights(obj: Any, key: str | None) -> tuple[str | None, list[str]]:
    """The dotted key of the weights' subtree, or None for the whole object."""
    if key is not None:
        node = obj
        for part in [p for p in key.split(".") if p]:
            if not isinstance(node, Mapping) or part not in node:
                raise UsageError(f"--weights-key {key!r}: no such key in the checkpoint")
            node = node[part]
        return key or None, []
    if not isinstance(obj, Mapping) or _is_optimizer_state(obj):
        return None, []
    for candidate in WEIGHT_KEYS:
        if isinstance(obj.get(candidate), Mapping) and obj[candidate]:
            return candidate, [f"weights taken from the checkpoint's {candidate!r} entry "
                               "(choose another with --weights-key)"]
    return None, []


def _dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


class TorchSource(SourceBase):
    """A ``torch.save`` file: plain state_dict, nested training checkpoint, Lightning."""

    def __init__(self, path: str, policy: LoadPolicy, is_zip: bool) -> None:
        super().__init__(path, "torch" if is_zip else "torch-legacy", (path,))
        if not is_zip:
            self.notes.append("legacy (pre-zip) torch file: loaded without mmap")
        obj = _load(path, policy, is_zip)
        self.raw = obj  # the loaded object (tensors memory-mapped), for the optimizer state
        key, notes = _pick_weights(obj, policy.weights_key)
        self.notes.extend(notes)
        flat: dict[str, tuple[Any, str | None]] = {}
        _flatten(obj, "", None, flat)
        self._tensors: dict[str, tuple[Any, str | None]] = {}
        for name, (tensor, skip) in flat.items():
            if key is not None:
                if name.startswith(key + "."):
                    name = name[len(key) + 1:]
                elif skip is None:
                    skip = f"outside the weights ({key!r})"
            self._tensors[name] = (tensor, skip)

    def entries(self) -> Iterator[TensorInfo]:
        for name, (t, skip) in self._tensors.items():
            if not isinstance(t, np.ndarray) and (t.is_sparse or t.is_quantized
                                                  or t.device.type == "meta"):
                skip = skip or f"unsupported tensor layout ({t.layout}, {t.device.type})"
            yield TensorInfo(name, tuple(t.shape), _dtype_name(t), skip)

    def read(self, name: str) -> np.ndarray:
        import torch

        t, _ = self._tensors[name]
        if isinstance(t, np.ndarray):
            return np.array(t, dtype=np.float64)
        return t.detach().to(device="cpu", dtype=torch.float64).numpy()

    def weights(self) -> dict[str, Any]:
        """The weights' tensors as stored (for loading into the user's model)."""
        return {n: t for n, (t, skip) in self._tensors.items() if skip is None}

    def close(self) -> None:
        self._tensors = {}
        self.raw = None
