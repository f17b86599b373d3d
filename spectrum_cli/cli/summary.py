"""The terminal summary of a report document (the same for ``analyze`` and
``report show``): a table sorted by κ that fits 80 columns, then footnotes."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from spectrum_cli.report.document import from_json_value

#: Width taken by every column but the tensor name (with separators).
OTHER_COLUMNS = 46
EXTREME_KAPPA = 1e6


def fmt(x: Any, digits: int = 3) -> str:
    """Compact number: 3 significant digits (or ``digits``), exponent unpadded (8.18e4)."""
    x = from_json_value(x)
    if digits != 3 and isinstance(x, float) and math.isfinite(x) and 1e-2 <= abs(x) < 1e3:
        return f"{x:.{digits}g}"
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e3:
        return f"{x:.3g}"
    if 1e3 <= abs(x) < 1e5:
        return f"{x:.0f}"
    mant, exp = f"{x:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def short_name(name: str, width: int) -> str:
    """Keep the end of long dotted names, where the layer's identity is."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


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
    console.print(Text.assemble(("spectrum ", "bold"), f"{src['path']} ",
                                (f"[{src['format']}]", "dim")), soft_wrap=True)
    with_rho = any("spectral_radius" in t["metrics"] for t in shown)
    width = max(20, console.width - OTHER_COLUMNS - (6 if with_rho else 0))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), show_edge=False,
                  collapse_padding=True)
    table.add_column("tensor", no_wrap=True, overflow="ellipsis", max_width=width + 1)
    table.add_column("shape", no_wrap=True)
    titles = ["κ", "σmax", "σmin", "Hnorm", "srank"] + (["ρ"] if with_rho else [])
    for title in titles:
        table.add_column(title, justify="right", no_wrap=True)
    for t in shown:
        m = t["metrics"]
        name = short_name(t["name"], width) + ("†" if t["kind"] == "conv_reshaped" else "")
        shape = "x".join(str(d) for d in t["matrix_shape"])
        if t["status"] != "ok":
            table.add_row(Text(name), shape, Text(f"{m.get('nonfinite_count', '?')} NaN/Inf"),
                          *["-"] * (len(titles) - 1), style=_row_style(t))
            continue
        keys = ["kappa", "sigma_max", "sigma_min", "spectral_entropy_normalized",
                "stable_rank"] + (["spectral_radius"] if with_rho else [])
        cells = [_cell(t, k) for k in keys]
        table.add_row(Text(name), shape, *cells, style=_row_style(t))
    if shown:
        console.print(table)
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
    console.print(Text.assemble(("optimizer ", "bold"), f"{o['optimizer']} ({hyper}), step "
                                f"{'n/a' if step is None else step}, "
                                f"{len(o.get('tensors', []))} tensors",
                                (f" [found in {o.get('found_in')}]", "dim")))
    if "preconditioner_spread" in o:
        console.print(Text(f"  preconditioner spread sqrt(max P/min P) = "
                           f"{fmt(o['preconditioner_spread'])} (bounds κ(V) of Adam's "
                           "reduced operator)"))
    ops = doc.get("operators", [])
    if ops:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), show_edge=False,
                      collapse_padding=True, title="update operators", title_justify="left")
        for col in ("form", "n", "ρ(J)", "κ(V)", "max‖Jᵏ‖", "k*", "K≥", "EoS", "λmax(H)"):
            table.add_column(col, justify="left" if col == "form" else "right", no_wrap=True)
        for e in ops:
            m = e["metrics"]
            eos = m.get("eos_ratio_momentum", m.get("eos_ratio_adam"))
            table.add_row(Text(e["form"]), str(e["n_params"]),
                          _cell(e, "spectral_radius", digits=7),
                          *[_cell(e, k) for k in ("kappa_V", "max_power_norm", "argmax_power",
                                                  "kreiss_lower_bound")],
                          fmt(eos), _cell(e, "hessian_lambda_max"))
        console.print(table)
        for e in ops:
            ps = e.get("details", {}).get("pseudospectral_radius", [])
            if ps:
                console.print(Text(f"  {e['form']}: " + ", ".join(
                    f"ρ_ε({fmt(p['eps'])}) = {fmt(p['value'], 7)}"
                    + ("" if p["kind"] == "exact" else "≥") for p in ps), style="dim"))
        console.print(Text(f"  coordinates: {ops[0]['coordinates']}; EoS: edge-of-stability "
                           "ratio (1 = the threshold)", style="dim"))
        notes = {e.get("details", {}).get("rho_note") for e in ops} - {None}
        for note in notes:
            console.print(Text(f"  ρ(J): {note}", style="dim"))
    for note in o.get("notes", []):
        console.print(Text(f"  note: {note}", style="dim"))


def nonnormal_table(tensors: list[dict], total_width: int) -> Table:
    """ρ, κ(V), the Kreiss lower bound, transient growth and ρ_ε per square matrix."""
    eps = tensors[0]["nonnormal"]["pseudospectral_radius"]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), show_edge=False,
                  collapse_padding=True, title="non-normal (square matrices)",
                  title_justify="left")
    width = max(16, total_width - 50 - 8 * min(len(eps), 2))
    table.add_column("tensor", no_wrap=True, overflow="ellipsis", max_width=width + 1)
    titles = ["ρ", "κ(V)", "K≥", "max‖Aᵏ‖", "k*"] + [f"ρ_ε={fmt(e['eps'])}" for e in eps[:2]]
    for title in titles:
        table.add_column(title, justify="right", no_wrap=True)
    for t in tensors:
        m, nn = t["metrics"], t["nonnormal"]
        kv = ("?" + str(nn["eigenvalue_clusters"]) if not m.get("kappa_V_well_defined")
              and m.get("kappa_V") is None else fmt(m.get("kappa_V")))
        growth = fmt(m.get("max_power_norm")) + ("" if nn["max_power_norm_exact"] else "+")
        cells = [fmt(m.get("spectral_radius")), kv, fmt(m.get("kreiss_lower_bound")), growth,
                 fmt(m.get("argmax_power"))]
        cells += [fmt(p["value"]) + ("" if p["kind"] == "exact" else "≥")
                  for p in nn["pseudospectral_radius"][:2]]
        table.add_row(Text(short_name(t["name"], width)), *cells)
    return table


def footnotes(doc: dict, tensors: list[dict], shown: list[dict]) -> list[Text]:
    out: list[Text] = []
    s = doc["summary"]
    out.append(Text(f"{s['analysed']} matrices analysed, {s['skipped']} tensors skipped, "
                    f"{s['errors']} errors in {s['time_s']:.2f} s"))
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
        out.append(Text(f"eigenvalues: {n_square - n_eig} of {n_square} square matrices not "
                        f"eigen-analysed (--square {doc['settings'].get('square')}, max dim "
                        f"{doc['settings'].get('square_max_dim')}; --square all for all)",
                        style="dim"))
    if any(t.get("nonnormal") for t in tensors):
        out.append(Text("κ(V) ?[sizes]: eigenvalue clusters make κ(V) undefined; K≥: Kreiss "
                        "lower bound; max‖Aᵏ‖ for k ≤ power_max ('+' = not the proven "
                        "sup); ρ_ε exact unless marked ≥", style="dim"))
    for t in tensors:
        if t["status"] != "ok":
            out.append(Text(f"non-finite: {t['name']}: {'; '.join(t['notes'])}", style="red"))
        elif from_json_value(t["metrics"].get("kappa")) == math.inf:
            out.append(Text(f"singular: {t['name']} has σ_min = 0 (κ = inf)", style="yellow"))
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
    return out
