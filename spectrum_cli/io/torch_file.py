"""``torch.save`` files (zip and legacy), loaded weights-only and memory-mapped.

Safety (README, "Loading safety"): ``torch.load(weights_only=True)`` with torch >= 2.10. A
refusal is final: we list the offending globals with
``torch.serialization.get_unsafe_globals_in_checkpoint`` (a static disassembly, nothing
runs) and raise :class:`UnsafeCheckpointError`. Only the command line can widen the
allowlist (``--allow-global``) or turn safety off (``--trust-checkpoint``); we never retry
unsafely on our own.

Memory: zip files are opened with ``mmap=True, map_location="cpu"``, so a tensor's bytes
are paged in only when :meth:`TorchSource.read` touches it.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from spectrum_cli.core.errors import (InputError, SpectrumError, UnsafeCheckpointError,
                                      UsageError)
from spectrum_cli.io import storage
from spectrum_cli.io.base import (LoadPolicy, SourceBase, TensorInfo, open_regular,
                                  require_regular, resolve_global)
from spectrum_cli.io.pickle_scan import Scan, scan_file

#: Keys under which training checkpoints keep the model's weights, in order of preference.
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")


def allowed_globals(policy: LoadPolicy) -> list[Any]:
    """The objects ``--allow-global`` names, resolved before any file is read."""
    return [resolve_global(g) for g in policy.allow_globals]


def _unsafe_globals(path: str, message: str, policy: LoadPolicy,
                    scan: Scan | None = None) -> list[str]:
    """The globals outside the weights-only allowlist (and ``--allow-global``) that the
    file names: our own stack-simulating scan, torch's scan, and torch's message."""
    import torch

    scan = scan or scan_file(path)
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals()) | set(policy.allow_globals)
    except Exception:  # noqa: BLE001 - private API moved: list everything, not nothing
        allowed = set(policy.allow_globals)
    found = [g for g in scan.globals if g not in allowed]
    try:
        found += torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip, or opcodes torch's scan does not know
        pass
    found = found or re.findall(r"GLOBAL ([\w.]+)", message)
    return sorted(set(found) - set(policy.allow_globals))


def _load(path: str, policy: LoadPolicy, is_zip: bool) -> Any:
    import torch

    kwargs: dict[str, Any] = {"map_location": "cpu", "mmap": is_zip}
    require_regular(path)
    allowed = [] if policy.trust_checkpoint else allowed_globals(policy)  # UsageError first
    with contextlib.ExitStack() as stack:
        src: Any = path
        if storage.is_url(path):  # a file object reading ahead; no mmap of a remote object
            src = stack.enter_context(open_regular(path, block=storage.ZIP_BLOCK))
            kwargs["mmap"] = False
        return _torch_load(torch, src, path, policy, allowed, kwargs)


def _torch_load(torch: Any, src: Any, path: str, policy: LoadPolicy, allowed: list,
                kwargs: dict[str, Any]) -> Any:
    try:
        if policy.trust_checkpoint:
            return torch.load(src, weights_only=False, **kwargs)
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(src, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        if policy.trust_checkpoint:
            raise InputError(f"{path}: corrupt pickle ({exc})") from None
        message = str(exc)
        if "Weights only load failed" not in message:
            raise InputError(f"{path}: corrupt or truncated torch checkpoint "
                             f"({message.splitlines()[0] if message else 'unpickling'})"
                             ) from None
        detail = next((ln.strip() for ln in message.splitlines()
                       if "GLOBAL" in ln or "Unsupported" in ln), "")
        scan = scan_file(path)
        unsafe = _unsafe_globals(path, message, policy, scan)
        if not unsafe and scan.broken:  # not a refusal: the pickle is broken
            raise InputError(f"{path}: corrupt or truncated torch checkpoint (the pickle "
                             f"does not parse: {scan.broken[:200]})") from None
        raise UnsafeCheckpointError(path, unsafe, detail) from None
    except SpectrumError:
        raise
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, LookupError,
            TypeError, AttributeError, ArithmeticError, struct.error, MemoryError) as exc:
        if isinstance(exc, RecursionError):
            first = "nested too deeply"
        else:
            text = str(exc).strip()
            first = text.splitlines()[0][:200] if text else type(exc).__name__
        raise InputError(f"{path}: corrupt or truncated torch checkpoint ({first})") from None


def _is_optimizer_state(obj: Mapping) -> bool:
    return "state" in obj and "param_groups" in obj


#: Deepest nesting of containers a checkpoint may have, and most objects walked (a
#: pickle's memo can share one container many times over: 2**depth paths).
MAX_DEPTH = 100
MAX_NODES = 2_000_000


class _Flattener:
    """Dotted name -> (tensor, skip) for every tensor in a loaded object, refusing
    containers that contain themselves, nest too deeply or repeat without end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.out: dict[str, tuple[Any, str | None]] = {}
        self._nodes = 0
        self._open: set[int] = set()  # ids of the containers being walked

    def walk(self, obj: Any, prefix: str = "", skip: str | None = None, depth: int = 0
             ) -> None:
        import torch

        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise InputError(f"{self.path}: holds more than {MAX_NODES} objects (shared "
                             "references repeated?); refusing to walk it")
        if isinstance(obj, (torch.Tensor, np.ndarray)):
            self.out[prefix] = (obj, skip)
            return
        if depth >= MAX_DEPTH:
            raise InputError(f"{self.path}: containers nested more than {MAX_DEPTH} deep")
        if isinstance(obj, Mapping):
            if skip is None and _is_optimizer_state(obj):
                skip = "optimizer state"
            items: Any = obj.items()
        elif isinstance(obj, (list, tuple)):
            items = enumerate(obj)
        elif hasattr(obj, "state_dict") and callable(obj.state_dict):  # a whole nn.Module
            self.walk(obj.state_dict(), prefix, skip, depth + 1)
            return
        else:
            return
        if id(obj) in self._open:
            raise InputError(f"{self.path}: {prefix or 'the top level'} contains itself")
        self._open.add(id(obj))
        try:
            for key, value in items:
                self.walk(value, f"{prefix}.{key}" if prefix else str(key), skip, depth + 1)
        finally:
            self._open.discard(id(obj))


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
        walker = _Flattener(path)
        walker.walk(obj)
        flat = walker.out
        self._tensors: dict[str, tuple[Any, str | None]] = {}
        for name, (tensor, skip) in flat.items():
            if key is not None:
                if name.startswith(key + "."):
                    name = name[len(key) + 1:]
                elif skip is None:
                    skip = f"outside the weights ({key!r})"
            self._tensors[name] = (tensor, skip)

    def training_state(self) -> Any:
        """The loaded object: a training checkpoint may hold its optimizer state."""
        return self.raw

    def scalars(self) -> dict[str, Any]:
        """``step`` (from step, global_step, iteration or epoch) and ``loss`` stored at the
        checkpoint's top level, when they are finite numbers (a 1-element tensor counts)."""
        import math

        raw, out = self.raw, {}

        def number(x: Any) -> float | None:
            if hasattr(x, "item") and getattr(x, "numel", lambda: 0)() == 1:
                x = x.item()
            ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            return float(x) if ok else None

        if isinstance(raw, dict):
            for key in ("step", "global_step", "iteration", "epoch"):
                value = number(raw.get(key)) if not hasattr(raw.get(key), "item") else None
                if value is not None:
                    out["step"] = int(value)
                    break
            loss = number(raw.get("loss"))
            if loss is not None:
                out["loss"] = loss
        return out

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
