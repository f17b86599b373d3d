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
import math
import os
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
                                  require_regular, resolve_global, stored_loss,
                                  stored_step)
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


#: Globals outside ``torch.*`` that torch's weights-only unpickler accepts
#: (``torch/_weights_only_unpickler.py``, ``_get_allowed_globals``: every other key of
#: that table starts with ``torch.``).
WEIGHTS_ONLY_NON_TORCH = frozenset({"collections.OrderedDict", "collections.Counter",
                                    "_codecs.encode", "builtins.bytearray", "builtins.set",
                                    "builtins.complex"})


def _python3_name(name: str) -> str:
    """A Python 2 pickle's ``module.name`` as the unpickler maps it (protocol <= 2 files
    name ``__builtin__.set``; :mod:`_compat_pickle`, as torch's unpickler does)."""
    import _compat_pickle

    module, _, qual = name.rpartition(".")
    if (module, qual) in _compat_pickle.NAME_MAPPING:
        module, qual = _compat_pickle.NAME_MAPPING[(module, qual)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{qual}"


def refused_before_torch(scan: Scan, policy: LoadPolicy) -> list[str]:
    """The globals the file names that torch's weights-only load would certainly refuse
    (outside ``torch.*`` and :data:`WEIGHTS_ONLY_NON_TORCH`, not allowed by
    ``--allow-global``), found by the static scan without importing torch: a hostile
    file is refused in a fraction of a second instead of after torch's import. An empty
    list decides nothing: torch's own load still judges every file."""
    allowed = set(policy.allow_globals)
    return sorted({g for g in scan.globals
                   if g not in allowed and _python3_name(g) not in allowed
                   and not _python3_name(g).startswith("torch.")
                   and _python3_name(g) not in WEIGHTS_ONLY_NON_TORCH})


def load_torch_file(path: str, policy: LoadPolicy, is_zip: bool) -> Any:
    """``torch.load`` of the file ``path`` names, through a descriptor opened once with
    :func:`open_regular` (a FIFO or device swapped in after the check is never read):
    zip files by ``/proc/self/fd/N`` so that they can be memory-mapped (``torch.load``
    takes a name ending in ``.safetensors`` for a safetensors file, and cannot encode a
    name that is not UTF-8), other files as the open file object."""
    require_regular(path)
    allowed = [] if policy.trust_checkpoint else allowed_globals(policy)  # UsageError first
    scan = None
    if not policy.trust_checkpoint:
        scan = scan_file(path)  # the one disassembly; a refusal by torch names from it too
        refused = refused_before_torch(scan, policy)
        if refused:
            raise UnsafeCheckpointError(path, refused)
    import torch

    kwargs: dict[str, Any] = {"map_location": "cpu", "mmap": is_zip}
    with contextlib.ExitStack() as stack:
        if storage.is_url(path):  # a file object reading ahead; no mmap of a remote object
            src: Any = stack.enter_context(open_regular(path, block=storage.ZIP_BLOCK))
            kwargs["mmap"] = False
            if is_zip:
                _check_members(src, path)
        else:
            fh = stack.enter_context(open_regular(path))
            if is_zip:
                _check_members(fh, path)
            src = _fd_path(fh)
            if src is None:  # no /proc: the open file itself (no mmap)
                src, kwargs["mmap"] = fh, False
        return _torch_load(torch, src, path, policy, allowed, kwargs, scan)


#: A zip member larger than this when inflated may inflate at most ``MAX_RATIO`` times
#: its stored size (``torch.save`` stores every record uncompressed; torch reads
#: ``data.pkl`` whole into memory, so a deflated one is a zip bomb).
BOMB_MIN_BYTES = 64 << 20
MAX_RATIO = 100


def _check_members(fh: Any, path: str) -> None:
    """Refuse a torch zip whose members inflate far beyond their stored bytes, from its
    central directory (before torch reads any of them)."""
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{path}: corrupt or truncated torch checkpoint ({exc})") from None
    finally:
        fh.seek(0)
    for info in infos:
        if info.file_size > BOMB_MIN_BYTES and \
                info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise InputError(f"{path}: member {info.filename!r} inflates from "
                             f"{info.compress_size} to {info.file_size} bytes (more than "
                             f"{MAX_RATIO}x): refused as a likely zip bomb")


def _fd_path(fh: Any) -> str | None:
    """``/proc/self/fd/N`` naming the open file ``fh`` (the same file, whatever its name
    or a later rename), or None where that does not exist."""
    fd_path = f"/proc/self/fd/{fh.fileno()}"
    try:
        same = os.path.samestat(os.stat(fd_path), os.fstat(fh.fileno()))
    except OSError:
        return None
    return fd_path if same else None


def _torch_load(torch: Any, src: Any, path: str, policy: LoadPolicy, allowed: list,
                kwargs: dict[str, Any], scan: Scan | None = None) -> Any:
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
        scan = scan or scan_file(path)
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
#: Longest dotted tensor name, and most characters of all the tensors' names (a long key
#: shared by every level of a deep nesting, or by many tensors, joins to gigabytes).
MAX_NAME_CHARS = 4096
MAX_NAMES_CHARS = 1 << 26


def _key(key: Any) -> str:
    """A container key as a name part: strings and ints as they are, anything else by
    a bounded repr (a key may be a tuple sharing itself 60 levels deep)."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool) and abs(key) < 10**18:
        return str(key)
    import reprlib

    text = reprlib.repr(key)
    return text if len(text) <= 200 else text[:200] + "..."


class _Flattener:
    """Dotted name -> (tensor, skip) for every tensor in a loaded object, refusing
    containers that contain themselves, nest too deeply or repeat without end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.out: dict[str, tuple[Any, str | None]] = {}
        self._nodes = 0
        self._chars = 0
        self._open: set[int] = set()  # ids of the containers being walked

    def walk(self, obj: Any, prefix: str = "", skip: str | None = None, depth: int = 0
             ) -> None:
        import torch

        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise InputError(f"{self.path}: holds more than {MAX_NODES} objects (shared "
                             "references repeated?); refusing to walk it")
        if isinstance(obj, (torch.Tensor, np.ndarray)):
            self._chars += len(prefix)
            if self._chars > MAX_NAMES_CHARS:
                raise InputError(f"{self.path}: its tensor names add up to more than "
                                 f"{MAX_NAMES_CHARS} characters (shared references "
                                 "repeated?); refusing to walk it")
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
                name = f"{prefix}.{_key(key)}" if prefix else _key(key)
                if len(name) > MAX_NAME_CHARS:
                    raise InputError(f"{self.path}: tensor names longer than "
                                     f"{MAX_NAME_CHARS} characters ({name[:80]!r}...); "
                                     "refusing to walk it")
                self.walk(value, name, skip, depth + 1)
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


def _beyond_storage(t: Any) -> str | None:
    """Why ``t`` is not read: a view with more elements than its storage holds (strides
    of 0, ``expand``, or overlapping strides): its float64 copy is bounded by nothing
    the file holds. None for an ordinary tensor (a slice or transpose of its storage)."""
    if isinstance(t, np.ndarray):  # unpickled from its bytes: owns them, contiguous
        return None
    try:
        if t.is_sparse or t.is_quantized or t.device.type == "meta":
            return None
        held = t.untyped_storage().nbytes() // max(t.element_size(), 1)
    except (RuntimeError, NotImplementedError, AttributeError):
        return None
    count = math.prod(t.shape)
    if count <= max(held, 1):
        return None
    return (f"a view of {count} elements over a storage of {held} (expanded or "
            "overlapping strides); not materialized")


def _dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


class TorchSource(SourceBase):
    """A ``torch.save`` file: plain state_dict, nested training checkpoint, Lightning."""

    def __init__(self, path: str, policy: LoadPolicy, is_zip: bool) -> None:
        super().__init__(path, "torch" if is_zip else "torch-legacy", (path,))
        if not is_zip:
            self.notes.append("legacy (pre-zip) torch file: loaded without mmap")
        obj = load_torch_file(path, policy, is_zip)
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
        """``step`` (from step, global_step, iteration or epoch: a Python number in
        ``0 .. 2**63 - 1``) and ``loss`` (a finite number or 1-element tensor) stored at
        the checkpoint's top level; anything else is left out."""
        raw, out = self.raw, {}
        if isinstance(raw, dict):
            for key in ("step", "global_step", "iteration", "epoch"):
                step = stored_step(raw.get(key))
                if step is not None:
                    out["step"] = step
                    break
            loss = raw.get("loss")
            if hasattr(loss, "item") and getattr(loss, "numel", lambda: 0)() == 1:
                loss = loss.item()
            loss = stored_loss(loss)
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
        why = _beyond_storage(t)
        if why:  # never materialized: a few stored bytes could stand for gigabytes
            raise InputError(f"{self.path}: tensor {name!r}: {why}")
        if isinstance(t, np.ndarray):
            return np.array(t, dtype=np.float64)
        return t.detach().to(device="cpu", dtype=torch.float64).numpy()

    def weights(self) -> dict[str, Any]:
        """The weights' tensors as stored (for loading into the user's model)."""
        return {n: t for n, (t, skip) in self._tensors.items() if skip is None}

    def close(self) -> None:
        self._tensors = {}
        self.raw = None
