"""The result codec: a measured tensor's results (spectrum's core dataclasses) as JSON
and back, bit for bit; nothing but ``spectrum_cli.core`` dataclasses is rebuilt."""

from __future__ import annotations

from typing import Any

#: Dataclasses the result codec rebuilds: spectrum's own core results, nothing else.
_CODEC_MODULES = ("spectrum_cli.core.",)


def encode(x: Any) -> Any:
    """A result (a TensorResult and what it holds) as JSON-able data that
    :func:`decode` turns back into an equal object, bit for bit (floats are written as
    their shortest repr, which reads back exactly). TypeError for anything else."""
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        cls = type(x)
        if not cls.__module__.startswith(_CODEC_MODULES):
            raise TypeError(f"not a result: {cls.__module__}.{cls.__qualname__}")
        return {"__dc__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: encode(getattr(x, f.name)) for f in dataclasses.fields(x)}}
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biufc":
            raise TypeError(f"array of {x.dtype}")
        flat = x.ravel().tolist()
        data = [[v.real, v.imag] for v in flat] if x.dtype.kind == "c" else flat
        return {"__nd__": x.dtype.str, "shape": list(x.shape), "data": data}
    if isinstance(x, np.generic):
        return encode(x.item())
    if isinstance(x, complex):
        return {"__c__": [x.real, x.imag]}
    if isinstance(x, tuple):
        return {"__t__": [encode(v) for v in x]}
    if isinstance(x, list):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise TypeError("a mapping with keys other than strings")
        return {"__d__": {k: encode(v) for k, v in x.items()}}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"not a result: {type(x).__name__}")


def decode(x: Any) -> Any:
    """The object :func:`encode` wrote (ValueError/TypeError for anything it did not:
    only dataclasses of spectrum's core are rebuilt, nothing is imported from elsewhere)."""
    import dataclasses
    import importlib

    import numpy as np

    if isinstance(x, list):
        return [decode(v) for v in x]
    if not isinstance(x, dict):
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"unexpected {type(x).__name__}")
    if "__t__" in x:
        return tuple(decode(v) for v in x["__t__"])
    if "__d__" in x:
        return {str(k): decode(v) for k, v in x["__d__"].items()}
    if "__c__" in x:
        return complex(*x["__c__"])
    if "__nd__" in x:
        dtype = np.dtype(str(x["__nd__"]))
        if dtype.kind not in "biufc":
            raise TypeError(f"array of {dtype}")
        data = [complex(*v) for v in x["data"]] if dtype.kind == "c" else x["data"]
        return np.asarray(data, dtype=dtype).reshape([int(n) for n in x["shape"]])
    if "__dc__" in x:
        module, _, name = str(x["__dc__"]).partition(":")
        if not module.startswith(_CODEC_MODULES) or not name.isidentifier():
            raise ValueError(f"not a result class: {x['__dc__']!r}")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"not a result class: {x['__dc__']!r}")
        return cls(**{str(k): decode(v) for k, v in x["fields"].items()})
    raise ValueError("unexpected mapping")

