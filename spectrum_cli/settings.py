"""The settings schema: every option that ``analyze``, ``batch`` and ``watch`` share,
declared once.

From these entries come the command-line options (help, choices, panels:
:mod:`spectrum_cli.cli.options`), the keys of ``spectrum.toml`` / ``[tool.spectrum]`` and
the ``SPECTRUM_*`` variables (:mod:`spectrum_cli.config`). Safety and output options are
command line only (``config=False``): a file found beside a checkpoint cannot widen what
spectrum loads or where it writes. Pure data: importing this imports nothing heavy.

Every setting has a range, checked once at the edge by :func:`check` (the command line,
configuration files, ``SPECTRUM_*`` and the Python API all go through
:func:`spectrum_cli.config.resolve` or :class:`spectrum_cli.config.Config`): numbers
between ``minimum`` and ``maximum`` (finite: ``inf``, ``nan`` and ``1e400`` are refused),
text of at most :data:`MAX_TEXT` characters, lists of at most :data:`MAX_ITEMS` items,
sizes (``max_memory``) of at most :data:`MAX_SIZE` bytes. The upper bounds keep a value
copied from a stranger's configuration from turning into a run that never ends
(``power_max = 1e9``) or an allocation that cannot succeed; each is far beyond what a
real run needs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from spectrum_cli.core.errors import UsageError

SELECT = "Selection"
NUMERICS = "Numerics"
OPTIM = "Optimizer state and Hessian"
OUTPUT = "Output and CI"
SAFETY = "Loading safety (command line only)"
RUN = "Run"
WATCH = "Watch"
TENSORBOARD = "TensorBoard"


@dataclass(frozen=True)
class Setting:
    """One option. ``kind`` is str, int, float, bool (a flag) or list (repeatable; comma-
    separated in the environment); ``default`` is the value used when nothing is given
    (shown in the help), ``None`` where the default depends on the input."""

    name: str
    kind: str
    help: str
    panel: str
    default: Any = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    config: bool = True
    option: str | None = None  # the command-line spelling, when not --name-with-dashes
    role: str = "analysis"  # what it shapes: analysis, operator, load, run or output
    #: The commands whose options are derived from this entry (batch and watch declare
    #: their own --cache-dir and --no-cache; watch analyses one checkpoint at a time in
    #: its own process, so it takes no executor options).
    commands: tuple[str, ...] = ("analyze", "batch", "watch")

    @property
    def flag(self) -> str:
        return self.option or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str | None:
        return f"SPECTRUM_{self.name.upper()}" if self.config else None


SETTINGS: tuple[Setting, ...] = (
    # Selection
    Setting("include", "list", "Analyse only tensors matching this glob ('*' crosses dots) "
            "or 're:REGEX'. Repeatable.", SELECT, metavar="GLOB"),
    Setting("exclude", "list", "Skip tensors matching this glob or 're:REGEX'. Repeatable.",
            SELECT, metavar="GLOB"),
    Setting("weights_key", "str", "Dotted key of the weights inside a training checkpoint "
            "(default: the first of state_dict, model_state_dict, model, module, net, "
            "network; '' = everything).", SELECT, metavar="KEY", role="load"),
    Setting("conv", "str", "k-D kernels: reshape to (out, in·k1·k2…) or skip them.", SELECT,
            default="reshape", choices=("reshape", "skip")),
    # Numerics
    Setting("square", "str", "Eigen and non-normal analysis of square matrices: 'auto' "
            "(the recurrent weights weight_hh*, whole and per gate, which act on their own "
            "output every step; a file's only matrix up to 1024; other squares only up to "
            "--square-max-dim), 'recurrent', "
            "'all', 'none'.", NUMERICS, default="auto",
            choices=("auto", "recurrent", "all", "none")),
    Setting("square_max_dim", "int", "Under --square auto, also eigen-analyse other "
            "square matrices up to this side (0: none; their powers mean nothing for a "
            "layer applied once).", NUMERICS, default=0, minimum=0, maximum=16384),
    Setting("eps", "list", "Pseudospectral radius ρ_ε for these ε (absolute; see "
            "--eps-relative). Repeatable or comma-separated.", NUMERICS,
            metavar="EPS[,EPS...]"),
    Setting("eps_relative", "bool", "Scale each --eps by ‖A‖₂.", NUMERICS, default=False),
    Setting("power_max", "int", "Transient growth: ‖A^k‖₂ for k = 1..N.", NUMERICS,
            default=200, minimum=1, maximum=10_000),
    Setting("effective_rank_tau", "float", "effective_rank counts singular values above "
            "tau·σ_max.", NUMERICS, default=0.01, minimum=0.0, maximum=1.0),
    Setting("svd_route", "str", "Dense backend: 'gram' (checked, refined, falls back to gesdd), "
            "'gesdd', or 'auto'.", NUMERICS, default="auto",
            choices=("auto", "gram", "gesdd")),
    Setting("backend", "str", "'dense', 'lanczos', 'randomized-svd', a plugin (see "
            "`spectrum backends`) or 'auto': dense up to 2^28 entries and min side 8192, "
            "else lanczos.", NUMERICS, default="auto", metavar="NAME"),
    Setting("device", "str", "Where dense and randomized-svd compute.", NUMERICS,
            default="cpu", choices=("cpu", "cuda")),
    Setting("dtype", "str", "Working precision.", NUMERICS, default="float64",
            choices=("float64", "float32")),
    Setting("randomize", "bool", "Also compute rand_distance, the distance of the ESD "
            "from that of the entry-permuted matrix (WeightWatcher's randomize=True; one "
            "more spectrum per matrix, seeded by --seed).", NUMERICS, default=False),
    Setting("farms", "bool", "Also compute alpha_farms (FARMS, arXiv 2506.06280: the ESD "
            "averaged over fixed-aspect-ratio submatrices before the alpha_peak fit; about "
            "100 more spectra per matrix).", NUMERICS, default=False),
    Setting("top_k", "int", "How many of the largest singular values backends of extremes "
            "compute (2 give σ_max and the spectral gap).", NUMERICS, default=2, minimum=1,
            maximum=4096),
    Setting("seed", "int", "Seed of start vectors and probes (iterative backends).",
            NUMERICS, default=0, minimum=0, maximum=2**32 - 1),
    Setting("threads", "int", "BLAS/torch threads per worker process (default: the "
            "usable cores divided by the worker processes, at least 1).", NUMERICS,
            minimum=1, maximum=1024, role="run"),
    # Run
    Setting("executor", "str", "How the analyses are computed: 'serial', 'processes' or a "
            "plugin (spectrum.executors); 'auto': processes when there is more than one "
            "job.", RUN, default="auto", metavar="NAME", role="run",
            commands=("analyze", "batch")),
    Setting("scheduler", "str", "A Dask scheduler (tcp://HOST:PORT) to send the tasks to "
            "(implies --executor dask; needs spectrum-cli\\[distributed]).", RUN,
            metavar="ADDRESS", role="run", commands=("analyze", "batch")),
    Setting("scheduler_file", "str", "A Dask scheduler file (dask scheduler "
            "--scheduler-file) instead of --scheduler.", RUN, metavar="PATH", role="run",
            commands=("analyze", "batch")),
    Setting("jobs", "int", "Worker processes measuring tensors in parallel, largest first "
            "(BLAS threads split so workers x threads <= cores); 1: in this process.",
            RUN, default=1, minimum=1, maximum=1024, role="run", commands=("analyze",)),
    Setting("max_memory", "str", "Run fewer workers at once so that their expected peak "
            "memory (each holds one tensor's float64 copy and its workspace) stays under "
            "SIZE, e.g. 8GiB or 512MB; exit 2 if the largest tensor alone needs more.",
            RUN, metavar="SIZE", role="run", commands=("analyze", "batch")),
    Setting("cache_dir", "str", "Cache per-tensor results here, so that a killed run "
            "resumes where it stopped (by the files' content hash, settings and spectrum's "
            "code). \\[default: $SPECTRUM_CACHE_DIR or ~/.cache/spectrum/batch, for "
            "checkpoints of 256 MiB or more]", RUN, metavar="DIR", config=False,
            role="output", commands=("analyze",)),
    Setting("no_cache", "bool", "Neither read nor write cached per-tensor results.", RUN,
            default=False, config=False, role="output", commands=("analyze",)),
    # Optimizer state and Hessian
    Setting("model", "str", "Your model: a function returning the nn.Module the "
            "checkpoint's weights load into (enables the update-operator analysis).",
            OPTIM, metavar="MODULE:FACTORY", role="operator"),
    Setting("data", "str", "Your data: returns (inputs, targets) or an iterable of such "
            "batches.", OPTIM, metavar="MODULE:FN", role="operator"),
    Setting("loss", "str", "The loss (mean reduction): mse, cross_entropy or MODULE:FN.",
            OPTIM, default="mse", metavar="NAME|MODULE:FN", role="operator"),
    Setting("dense_max", "int", "Dense Hessian up to this many parameters, matrix-free "
            "Lanczos beyond.", OPTIM, default=2000, minimum=1, maximum=32768, role="operator"),
    Setting("params", "list", "Restrict the operator to these parameters (their Hessian "
            "block). Repeatable.", OPTIM, metavar="GLOB", role="operator"),
    Setting("coordinates", "str", "SGD state coordinates: (θ, buf) as stored, or scaled "
            "(θ, lr·buf).", OPTIM, default="stored", choices=("stored", "scaled"), role="operator"),
    Setting("step_convention", "str", "Adam bias correction with the snapshot's t or t+1.",
            OPTIM, default="snapshot", choices=("snapshot", "next"), role="operator"),
    # Output and CI
    Setting("fail_on", "list", "Exit 1 if a tensor violates METRIC OP NUMBER\\[@GLOB], "
            "e.g. 'kappa>1e4' or 'kappa>1e4@*.attention.*'. Repeatable.", OUTPUT,
            metavar="COND", role="output"),
    Setting("exit_zero", "bool", "Exit 0 even when a --fail-on threshold is violated.",
            OUTPUT, default=False, config=False, role="output"),
    Setting("strict", "bool", "Exit 2 if an iterative method did not converge or a "
            "--fail-on condition could not be checked.", OUTPUT, default=False,
            config=False, role="output", commands=("analyze", "batch")),
    Setting("json_out", "bool", "Print one JSON document on stdout instead of the table.",
            OUTPUT, default=False, config=False, option="--json", role="output"),
    Setting("force", "bool", "Let --report/--plot replace an existing file that spectrum "
            "did not write (never an input, a device or a folder).", OUTPUT,
            default=False, config=False, role="output"),
    Setting("no_progress", "bool", "No progress bar (it only shows on a terminal anyway).",
            OUTPUT, default=False, config=False, role="output"),
    # Watch
    Setting("poll", "float", "Seconds between two looks at the folder.", WATCH, default=2.0,
            minimum=0.01, maximum=3600.0, role="run", commands=("watch",)),
    Setting("settle", "float", "Read a checkpoint once its files are unchanged across two "
            "polls and for at least this many seconds (an HF folder also needs its weights "
            "and trainer_state.json, a DCP folder its .metadata).", WATCH, default=2.0,
            minimum=0.0, maximum=86400.0, role="run", commands=("watch",)),
    Setting("idle_timeout", "float", "End (exit 0 when all is well) once no new checkpoint "
            "came for this many seconds. \\[default: watch until Ctrl-C]", WATCH,
            metavar="SECONDS", minimum=0.0, maximum=30 * 86400.0, role="run",
            commands=("watch",)),
    Setting("keep_going", "bool", "At a --fail-on violation, print the alert and go on "
            "watching (exit 1 at the end) instead of stopping with exit 1.", WATCH,
            default=False, config=False, role="output", commands=("watch",)),
    Setting("on_alert", "str", "Run this command at each alert (split like a shell "
            "would, run without one), the alert in SPECTRUM_ALERT_CHECKPOINT, _STEP, "
            "_METRIC, _VALUE, _CONDITION, _TENSOR, _MESSAGE ...; stopped after 30 s; a "
            "failure is a warning. Command line only.", WATCH, metavar="CMD",
            config=False, role="output", commands=("watch",)),
    Setting("tensorboard", "str", "Write every checkpoint's indicators as scalars and its "
            "singular-value distribution (log10 σ) as a histogram to this TensorBoard log "
            "folder (needs spectrum-cli\\[tensorboard]).", TENSORBOARD, metavar="LOGDIR",
            config=False, role="output", commands=("watch", "batch")),
    # Loading safety
    Setting("allow_global", "list", "Admit this global when unpickling the files named on "
            "the command line. Repeatable.", SAFETY, metavar="MODULE.NAME", config=False, role="load"),
    Setting("storage_option", "list", "For s3://, gs://, hf:// and other fsspec URLs: "
            "KEY=VALUE passed to the filesystem (e.g. endpoint_url=http://HOST:PORT, "
            "anon=true), beside the standard AWS_* variables. Repeatable.", SAFETY,
            metavar="KEY=VALUE", config=False, role="load"),
    Setting("trust_checkpoint", "bool", "Load the files named on the command line with "
            "weights_only=False: runs code from them. Only for files you made yourself.",
            SAFETY, default=False, config=False, role="load"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def names(role: str) -> tuple[str, ...]:
    """The settings of one role: ``analysis`` (AnalyzeOptions: recorded in every report and
    part of the batch cache key), ``operator`` (the optimizer-state analysis: likewise),
    ``load`` (which weights, and loading safety), ``run`` (how, not what: threads,
    executor) or ``output``."""
    return tuple(s.name for s in SETTINGS if s.role == role)

#: The keys a configuration file or ``SPECTRUM_*`` variable may set, with their kinds.
CONFIG_KEYS: dict[str, str] = {s.name: s.kind for s in SETTINGS if s.config}

#: Keys that are unsafe to take from a file or the environment (refused, not ignored).
FORBIDDEN = ("trust_checkpoint", "allow_global", "allow_globals", "weights_only",
             "on_alert", "storage_option")

#: Settings that are neither analysis values nor flags of the run itself.
_RUN_ONLY = {"exit_zero", "strict", "json_out", "force", "no_progress", "allow_global",
             "trust_checkpoint", "cache_dir", "no_cache"}


def config_values(given: dict[str, Any]) -> dict[str, Any]:
    """The configuration-valued subset of the parsed command line (a False flag or an
    empty list counts as not given, so that a file or the environment may set it)."""
    return {k: (v if v is not False else None) for k, v in given.items()
            if k in CONFIG_KEYS and k not in _RUN_ONLY}


#: The longest text a setting may hold (a path, an address, a pattern, a MODULE:FN).
MAX_TEXT = 4096
#: The most items a list setting may hold (``--include``, ``--eps``, ``--fail-on``, ...).
MAX_ITEMS = 256
#: The largest ``max_memory``: 1 EiB.
MAX_SIZE = 1 << 60
#: Settings holding a size (``8GiB``), checked as numbers of bytes by the configuration.
SIZES = ("max_memory",)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def expected(s: Setting) -> str:
    """What a value of ``s`` must be, in words (for messages)."""
    if s.choices:
        return "one of " + ", ".join(s.choices)
    if s.name in SIZES:
        return f"a size such as 8GiB or 512MB, at most {MAX_SIZE} bytes (1 EiB)"
    noun = {"int": "an integer", "float": "a number", "bool": "true or false",
            "list": f"a list of strings (at most {MAX_ITEMS}, each of at most {MAX_TEXT} "
                    "characters)",
            "str": f"a string of at most {MAX_TEXT} characters"}[s.kind]
    if s.kind in ("int", "float"):
        if s.minimum is not None and s.maximum is not None:
            return f"{noun} from {_number(s.minimum)} to {_number(s.maximum)}"
        if s.minimum is not None:
            return f"{noun} >= {_number(s.minimum)}"
        return f"a finite {noun[2:] if noun.startswith('a ') else noun}"
    return noun


def shown(value: Any) -> str:
    """A value as a message shows it (long text cut)."""
    if isinstance(value, str) and len(value) > 80:
        return repr(value[:80]) + f"... ({len(value)} characters)"
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= 200 else text[:200] + "..."


def check(s: Setting, value: Any) -> Any:
    """``value`` as setting ``s`` holds it (an integral float becomes an int), or
    ValueError saying what was expected and what was given. ``None`` is "not given"."""
    if value is None:
        return None
    bad = ValueError(f"expected {expected(s)}, got {shown(value)}")
    if s.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if s.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if isinstance(value, float) and not (value == value and abs(value) != float("inf")):
            raise bad  # nan, inf
        if s.kind == "int" and isinstance(value, float):
            if not value.is_integer():
                raise bad
            value = int(value)
        elif s.kind == "float":
            value = float(value)
        if (s.minimum is not None and value < s.minimum) or \
                (s.maximum is not None and value > s.maximum):
            raise bad
        return value
    if s.kind == "list":
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or \
                len(value) > MAX_ITEMS or not all(isinstance(v, str) and len(v) <= MAX_TEXT
                                                  and "\x00" not in v for v in value):
            raise bad
        return list(value)
    if s.name in SIZES and isinstance(value, int) and not isinstance(value, bool):
        return value  # bytes, as the Python API may give them (range: the configuration)
    if not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value:
        raise bad
    if s.choices and value not in s.choices:
        raise bad
    return value

#: Size units of ``--max-memory`` and the like (K, M, G, T: powers of 1000; KiB...: 1024).
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int, what: str = "--max-memory") -> int:
    """Bytes of a size such as ``8GiB``, ``512MB``, ``1.5G`` or ``1000000`` (K, M, G, T
    are powers of 1000, KiB, MiB, GiB, TiB of 1024); UsageError when it is not one."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise UsageError(f"{what}: expected a positive size, got {text!r}")
        return text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*",
                         str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise UsageError(f"{what}: expected a size such as 8GiB, 512MB or 1000000, "
                             f"got {text!r}")
        value, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(value * _UNITS[unit]):  # 1e400: inf, not a size
        shown = repr(text) if len(str(text)) <= 40 else repr(str(text)[:40] + "...")
        raise UsageError(f"{what}: {shown} is too large for a size in bytes")
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise UsageError(f"{what}: expected a positive size, got {text!r}")
    return size


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
