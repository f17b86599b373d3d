"""The terminal summary of a report document (the same for ``analyze`` and
``report show``): a table sorted by κ that fits 80 columns, then footnotes."""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from spectrum_cli.core.metrics import CORE_METRICS as METRICS
from spectrum_cli.report.document import fmt, from_json_value
from spectrum_cli.report.output import printable

#: Width taken by every column but the tensor name (with separators).
OTHER_COLUMNS = 46
EXTREME_KAPPA = 1e6


def short_name(name: str, width: int) -> str:
    """A name shortened in the middle to ``width`` characters, so that both the model's
    prefix and the layer's own suffix stay visible (``encoder.layer.1…attention.query``),
    with control characters escaped (:func:`printable`): names come from files."""
    name = printable(name)
    if len(name) <= width:
        return name
    width = max(width, 3)
    tail = (width - 1) // 2 + (width - 1) % 2
    head = width - 1 - tail
    return name[:head] + "…" + name[len(name) - tail:]


def short_names(names: Sequence[str], width: int) -> list[str]:
    """:func:`short_name` of each name, kept distinct: where two different names would
    show the same (``encoder.layers.0.ffn.W12.weight`` and ``encoder.layers.2.ffn.W12
    .weight`` both as ``encoder.lay….W12.weight``), each of them keeps the place where
    the group differs (its first differing character in the head, else its last in the
    tail, else a window around it between two ellipses). Names still alike after that
    (none in practice) are shown whole, folded by the table."""
    full = [printable(n) for n in names]
    shown = [short_name(n, width) for n in full]
    groups: dict[str, set[str]] = {}
    for s, f in zip(shown, full):
        groups.setdefault(s, set()).add(f)
    better: dict[str, str] = {}
    for group in (sorted(g) for g in groups.values() if len(g) > 1):
        prefix = len(os.path.commonprefix(group))
        suffix = len(os.path.commonprefix([g[::-1] for g in group]))
        for f in group:
            better[f] = _around(f, width, prefix, suffix)
    out = [better.get(f, s) for f, s in zip(full, shown)]
    counts: dict[str, set[str]] = {}
    for s, f in zip(out, full):
        counts.setdefault(s, set()).add(f)
    return [s if len(counts[s]) == 1 else f for s, f in zip(out, full)]


def _around(name: str, width: int, prefix: int, suffix: int) -> str:
    """``name`` in ``width`` characters showing its character at ``prefix`` (the first
    that differs within its group) or, failing that, the one ``suffix`` from its end."""
    width = max(width, 5)
    if len(name) <= width:
        return name
    if prefix + 2 <= width - 1:  # the differing character fits in the head
        head = prefix + 1
        tail = width - 1 - head
        return name[:head] + "…" + (name[len(name) - tail:] if tail else "")
    if suffix + 2 <= width - 1:  # ... or in the tail
        tail = suffix + 1
        head = width - 1 - tail
        return name[:head] + "…" + name[len(name) - tail:]
    keep = width - 2
    head = keep // 3
    tail = keep // 3
    window = keep - head - tail
    start = min(max(prefix - window // 2, head), len(name) - tail - window)
    return name[:head] + "…" + name[start:start + window] + "…" + name[len(name) - tail:]


def _text(text: Any, style: str = "") -> Text:
    """Text read from a file, shown inert: no markup, no control characters."""
    return Text(printable(text), style=style)


def fitted_table(columns: list[tuple[str, str, bool]], rows: list[list[Any]], width: int,
                 name_min: int = 12, **table_args: Any) -> tuple[Table, list[str]]:
    """A table whose first column holds names and the rest numbers, fitted to ``width``.

    ``columns`` are (title, justify, droppable). Numbers are never cut: when the
    columns do not fit beside a name column of ``name_min`` characters, droppable
    columns are dropped from the right (their titles are returned for a note); names
    are shortened in the middle to what is left."""
    def cell_len(c: Any) -> int:
        return Text(c).cell_len if isinstance(c, str) else c.cell_len

    keep = list(range(1, len(columns)))
    def others() -> int:
        return sum(max([cell_len(columns[i][0])] + [cell_len(r[i]) for r in rows]) + 2
                   for i in keep)

    dropped: list[str] = []
    while others() + name_min > width and any(columns[i][2] for i in keep):
        i = max(i for i in keep if columns[i][2])
        keep.remove(i)
        dropped.insert(0, columns[i][0])
    name_width = max(name_min, width - others())
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), show_edge=False,
                  collapse_padding=True, **table_args)
    table.add_column(columns[0][0], no_wrap=True, overflow="fold")
    for i in keep:
        table.add_column(columns[i][0], justify=columns[i][1], no_wrap=True, overflow="fold")
    names = short_names([r[0].plain if isinstance(r[0], Text) else r[0] for r in rows],
                        name_width)
    for r, shown in zip(rows, names):
        style = r[0].style if isinstance(r[0], Text) else ""
        table.add_row(Text(shown, style=style), *[r[i] for i in keep],
                      style=getattr(r, "style", None))
    return table, dropped


class Row(list):
    """A table row with a style."""

    style: str | None = None


def _cell(t: dict, metric: str, digits: int = 3) -> str:
    """The metric's value; '~' marks a bound or an estimate, 'n/a' an unavailable one."""
    if metric in t.get("unavailable", {}):
        return "n/a"
    text = fmt(t["metrics"].get(metric), digits)
    kind = t.get("accuracy", {}).get(metric, {}).get("accuracy", "exact")
    return ("~" + text) if kind != "exact" else text


def _sort_key(t: dict) -> tuple:
    if t["status"] != "ok":
        return (0, 0.0)
    k = from_json_value(t["metrics"].get("kappa"))
    return (1, -(k if k is not None else -1.0))


def _row_style(t: dict) -> str:
    if t["status"] != "ok":
        return "bold red"
    k = from_json_value(t["metrics"].get("kappa"))
    if k is not None and math.isinf(k):
        return "yellow"
    if k is not None and k >= EXTREME_KAPPA:
        return "red"
    return ""


def render(doc: dict[str, Any], console: Console, top: int | None = None) -> None:
    """Print the summary of ``doc`` to ``console``."""
    src = doc["source"]
    tensors = sorted(doc["tensors"], key=_sort_key)
    shown = tensors if top is None else tensors[:top]
    console.print(Text.assemble(("spectrum ", "bold"), f"{printable(src['path'])} ",
                                (f"[{printable(src['format'])}]", "dim")), soft_wrap=True)
    with_rho = any("spectral_radius" in t["metrics"] for t in shown)
    with_alpha = any("alpha" in t["metrics"] for t in shown)
    columns = [("tensor", "left", False), ("shape", "left", False), ("κ", "right", False),
               ("σmax", "right", True), ("σmin", "right", True), ("Hnorm", "right", True),
               ("srank", "right", True)] + ([("α", "right", True)] if with_alpha else []) \
        + ([("ρ", "right", True)] if with_rho else [])
    keys = ["kappa", "sigma_max", "sigma_min", "spectral_entropy_normalized",
            "stable_rank"] + (["alpha"] if with_alpha else []) \
        + (["spectral_radius"] if with_rho else [])
    rows = []
    for t in shown:
        m = t["metrics"]
        name = Text(printable(t["name"]) + ("†" if t["kind"] == "conv_reshaped" else ""))
        shape = "x".join(str(d) for d in t["matrix_shape"])
        if t["status"] != "ok":
            row = Row([name, shape, f"{m.get('nonfinite_count', '?')} NaN/Inf",
                        *["-"] * (len(keys) - 1)])
        else:
            row = Row([name, shape, *[_alpha_cell(t) if k == "alpha" else _cell(t, k)
                                       for k in keys]])
        row.style = _row_style(t) or None
        rows.append(row)
    table, dropped = fitted_table(columns, rows, console.width)
    if shown:
        console.print(table)
        if dropped:
            console.print(Text(f"(columns {', '.join(dropped)} left out at {console.width} "
                               "columns; widen the terminal or use --json)", style="dim"))
    square = [t for t in shown if t.get("nonnormal")]
    if square:
        console.print(nonnormal_table(square, console.width))
    if doc.get("optimizer") is not None:
        render_optimizer(doc, console)
    for line in footnotes(doc, tensors, shown):
        console.print(line)


def render_optimizer(doc: dict[str, Any], console: Console) -> None:
    """The optimizer state and, with a Hessian source, its update operators."""
    o = doc["optimizer"]
    groups = o.get("groups", [])
    hyper = ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}"
                      for k, v in (groups[0].items() if groups else ())
                      if k not in ("maximize",) and v not in (False, 0.0))
    step = o.get("step")
    console.print(Text.assemble(("optimizer ", "bold"), printable(
        f"{o['optimizer']} ({hyper}), step {'n/a' if step is None else step}, "
        f"{len(o.get('tensors', []))} tensors"),
        (printable(f" [found in {o.get('found_in')}]"), "dim")))
    if "preconditioner_spread" in o:
        console.print(_text(f"  preconditioner spread sqrt(max P/min P) = "
                           f"{fmt(o['preconditioner_spread'])} (bounds κ(V) of Adam's "
                           "reduced operator)"))
    ops = doc.get("operators", [])
    if ops:
        columns = [("form", "left", False), ("n", "right", False), ("ρ(J)", "right", False),
                   ("κ(V)", "right", False), ("max‖Jᵏ‖", "right", True),
                   ("k*", "right", True), ("K≥", "right", True), ("EoS", "right", True),
                   ("λmax(H)", "right", True)]
        rows = []
        for e in ops:
            m = e["metrics"]
            eos = _eos_ratio(m)
            rows.append(Row([_text(e["form"]), str(e["n_params"]),
                              _cell(e, "spectral_radius", digits=7),
                              *[_cell(e, k) for k in ("kappa_V", "max_power_norm",
                                                      "argmax_power", "kreiss_lower_bound")],
                              fmt(eos), _cell(e, "hessian_lambda_max")]))
        table, dropped = fitted_table(columns, rows, console.width, name_min=8,
                                      title="update operators", title_justify="left")
        if dropped:
            table.caption = f"(left out at {console.width} columns: {', '.join(dropped)})"
            table.caption_justify = "left"
        console.print(table)
        for e in ops:
            ps = e.get("details", {}).get("pseudospectral_radius", [])
            if ps:
                console.print(_text(f"  {e['form']}: " + ", ".join(
                    f"ρ_ε({fmt(p['eps'])}) = {fmt(p['value'], 7)}"
                    + ("" if p["kind"] == "exact" else "≥") for p in ps), style="dim"))
        console.print(_text(f"  coordinates: {ops[0]['coordinates']}; EoS: edge-of-stability "
                           "ratio (1 = the threshold)", style="dim"))
        notes = {e.get("details", {}).get("rho_note") for e in ops} - {None}
        for note in notes:
            console.print(_text(f"  ρ(J): {note}", style="dim"))
    for note in o.get("notes", []):
        console.print(_text(f"  note: {note}", style="dim"))


def _eos_ratio(metrics: dict) -> Any:
    """The optimizer's own edge-of-stability ratio (any rule's ``eos_ratio_*``), before
    gradient descent's ``eos_ratio_gd``."""
    own = [k for k in metrics if k.startswith("eos_ratio_") and k != "eos_ratio_gd"]
    return metrics.get(own[0]) if own else metrics.get("eos_ratio_gd")


def nonnormal_table(tensors: list[dict], total_width: int) -> Table:
    """ρ, κ(V), the Kreiss lower bound, transient growth and ρ_ε per square matrix."""
    eps = tensors[0]["nonnormal"]["pseudospectral_radius"]
    columns = [("tensor", "left", False), ("ρ", "right", False), ("κ(V)", "right", False),
               ("K≥", "right", True), ("max‖Aᵏ‖", "right", True), ("k*", "right", True)]
    columns += [(f"ρ_ε={fmt(e['eps'])}", "right", True) for e in eps[:2]]
    rows = []
    for t in tensors:
        m, nn = t["metrics"], t["nonnormal"]
        kv = ("?" + str(nn["eigenvalue_clusters"]) if not m.get("kappa_V_well_defined")
              and m.get("kappa_V") is None else fmt(m.get("kappa_V")))
        growth = fmt(m.get("max_power_norm")) + ("" if nn["max_power_norm_exact"] else "+")
        cells = [fmt(m.get("spectral_radius")), kv, fmt(m.get("kreiss_lower_bound")), growth,
                 fmt(m.get("argmax_power"))]
        cells += [fmt(p["value"]) + ("" if p["kind"] == "exact" else "≥")
                  for p in nn["pseudospectral_radius"][:2]]
        rows.append(Row([Text(printable(t["name"])), *cells]))
    table, dropped = fitted_table(columns, rows, total_width,
                                  title="non-normal (square matrices)", title_justify="left")
    if dropped:
        table.caption = f"(left out at {total_width} columns: {', '.join(dropped)})"
        table.caption_justify = "left"
    return table


#: WeightWatcher's reading of alpha: below 2 "over-trained", above 6 "under-trained"
#: (Martin & Mahoney, JMLR 22(165), 2021; weightwatcher 0.7.7's warnings).
ALPHA_LOW, ALPHA_HIGH = 2.0, 6.0


def _alpha_cell(t: dict) -> Text:
    a = from_json_value(t["metrics"].get("alpha"))
    style = "" if a is None else "red" if a < ALPHA_LOW else "yellow" if a > ALPHA_HIGH else ""
    return Text(_cell(t, "alpha", 2), style=style)


def alpha_line(tensors: list[dict]) -> Text | None:
    """The model-level reading of alpha, as WeightWatcher users look at it: the mean and
    range over the tensors, and how many are over- or under-trained by its thresholds."""
    vals = [from_json_value(t["metrics"].get("alpha")) for t in tensors
            if t["status"] == "ok"]
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None
    low = sum(v < ALPHA_LOW for v in vals)
    high = sum(v > ALPHA_HIGH for v in vals)
    text = (f"α (ESD power-law tail, WeightWatcher's alpha): mean {fmt(sum(vals) / len(vals))}"
            f", {fmt(min(vals))} … {fmt(max(vals))} over {len(vals)} tensors")
    if low or high:
        text += (f"; {low} below {ALPHA_LOW:g} (over-trained), {high} above {ALPHA_HIGH:g} "
                 "(under-trained)")
    return Text(text, style="yellow" if low or high else "dim")


def _plugin_metric_lines(tensors: list[dict]) -> list[Text]:
    """One line per metric from a plugin (spectrum.metrics): its range over the tensors,
    and on how many it was unavailable."""
    names = sorted({k for t in tensors for k in (*t["metrics"], *t.get("unavailable", {}))}
                   - set(METRICS))
    out = []
    for name in names:
        vals = [from_json_value(t["metrics"].get(name)) for t in tensors]
        vals = [v for v in vals if isinstance(v, (int, float))]
        missing = sum(1 for t in tensors if name in t.get("unavailable", {}))
        text = f"{name}: " + (f"{fmt(min(vals))} … {fmt(max(vals))} over {len(vals)} "
                              "tensors" if vals else "no value")
        if missing:
            text += f", unavailable on {missing}"
        out.append(Text(f"metric {text}", style="dim"))
    return out


def footnotes(doc: dict, tensors: list[dict], shown: list[dict]) -> list[Text]:
    out: list[Text] = []
    s = doc["summary"]
    out.append(Text(f"{s['analysed']} matrices analysed, {s['skipped']} tensors skipped, "
                    f"{s['errors']} errors in {s.get('wall_s', s['time_s']):.2f} s"))
    if len(shown) < len(tensors):
        out.append(Text(f"(showing the {len(shown)} largest κ of {len(tensors)}; --top "
                        "to change)", style="dim"))
    for note in doc["source"]["notes"]:
        out.append(Text(f"note: {note}", style="dim"))
    if any(t["kind"] == "conv_reshaped" for t in tensors):
        out.append(Text("† k-D kernel reshaped to (out, in·k1·k2…); --conv skip to skip",
                        style="dim"))
    routes = Counter((t["method"].get("backend"), t["method"].get("route"))
                     for t in tensors if t["method"])
    if routes:
        text = ", ".join(f"{n} {b}/{r}" for (b, r), n in sorted(routes.items()))
        out.append(Text(f"singular values: {text}", style="dim"))
    if any(t.get("accuracy") for t in tensors):
        out.append(Text("~ bound or estimate (error bars in --json/--report); n/a: the "
                        "backend cannot compute it", style="dim"))
    late = [t["name"] for t in tensors if not t.get("converged", True)]
    if late:
        out.append(Text(f"not converged: {', '.join(late[:5])}" + (" …" if len(late) > 5
                                                                   else ""), style="yellow"))
    n_square = sum(1 for t in tensors if t["status"] == "ok"
                   and t["matrix_shape"][0] == t["matrix_shape"][1])
    n_eig = sum(1 for t in tensors if "spectral_radius" in t["metrics"])
    if n_square > n_eig:
        st = doc["settings"]
        why = f"--square {st.get('square')}"
        if st.get("square") == "auto":
            why += (": recurrent weights, whose powers mean something" +
                    (f", and squares up to {st['square_max_dim']}"
                     if st.get("square_max_dim") else ""))
        out.append(Text(f"eigenvalues: {n_square - n_eig} of {n_square} square matrices not "
                        f"eigen-analysed ({why}; --square all for all)", style="dim"))
    if any(t.get("nonnormal") for t in tensors):
        out.append(Text("κ(V) ?[sizes]: eigenvalue clusters make κ(V) undefined; K≥: Kreiss "
                        "lower bound; max‖Aᵏ‖ for k ≤ power_max ('+' = not the proven "
                        "sup); ρ_ε exact unless marked ≥", style="dim"))
    for t in tensors:
        if t["status"] != "ok":
            out.append(Text(f"non-finite: {t['name']}: {'; '.join(t['notes'])}", style="red"))
        elif from_json_value(t["metrics"].get("kappa")) == math.inf:
            out.append(Text(f"singular: {t['name']} has σ_min = 0 (κ = inf)", style="yellow"))
    line = alpha_line(tensors)
    if line is not None:
        out.append(line)
    out.extend(_plugin_metric_lines(tensors))
    if doc["skipped"]:
        reasons = Counter(r["reason"] for r in doc["skipped"])
        text = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        out.append(Text(f"skipped: {text}", style="dim"))
    for e in doc["errors"]:
        out.append(Text(f"error: {e['name']}: {e['message']}", style="bold red"))
    violations = doc["fail_on"]["violations"]
    for v in violations[:20]:
        out.append(Text(f"✗ {v['condition']}: {v['tensor']} = {fmt(v['value'])}",
                        style="bold red"))
    if len(violations) > 20:
        out.append(Text(f"✗ … and {len(violations) - 20} more violations", style="bold red"))
    return [_text(line.plain, str(line.style)) for line in out]  # names come from files
