"""The leaderboard's self-contained HTML page (SPEC 7): `index.html`.

One sortable table per track (intervention, model), the reference policies as anchor rows in each,
every metric as value [lo, hi], each entry's name linking its config, the rejected submissions with
their reasons, and the safety-utility Pareto plot inline as a PNG data URI.

Names, reasons and links come from untrusted submissions: every piece of text is HTML-escaped, a
link is kept only when it is relative, and the page's Content-Security-Policy lets nothing load from
anywhere (images only from data: URIs) and runs only the one inline script whose hash it names, so
even a string that got past the escaping could neither run nor fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from medsafetyworld.evaluation.metrics import METRIC_NAMES
from medsafetyworld.leaderboard.grouping import READING_ORDER
from medsafetyworld.leaderboard.render import PARETO_X, PARETO_Y, better_direction, plot_pareto

TRACKS = ("intervention", "model")
REFERENCE = "reference"
TRACK_TITLES = {
    "intervention": "Intervention track",
    "model": "Model track",
}
TRACK_BLURBS = {
    "intervention": "A safety intervention (a pretraining strategy) trained by the benchmark's standard recipe.",
    "model": "A model trained any way its submitter chose; its training tokens and parameters are declared.",
}
# (column, header, kind): the columns every table starts with, before the metrics.
FIXED_COLUMNS = (
    ("name", "name", "text"),
    ("strategy", "strategy", "text"),
    ("preset", "preset", "text"),
    ("seeds", "seeds", "num"),
    ("recomputed", "recomputed", "text"),
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 1.5rem 2rem; color: #1b1f24; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .3rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
p { max-width: 70rem; margin: .3rem 0; }
.muted { color: #57606a; }
.scroll { overflow-x: auto; width: fit-content; max-width: 100%; border: 1px solid #d0d7de; border-radius: 4px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .55rem; border-bottom: 1px solid #e6e9ec; vertical-align: top; }
th { background: #f3f5f7; text-align: left; font-weight: 600; font-size: 12px; min-width: 4.5rem;
     max-width: 9rem; overflow-wrap: anywhere; }
table.board th { cursor: pointer; user-select: none; }
table.board th:hover, table.board th:focus { background: #e4e9ef; outline: none; }
th .better { color: #1a7f37; font-weight: 700; }
th[aria-sort="ascending"]::after { content: " \\25B2"; color: #0969da; }
th[aria-sort="descending"]::after { content: " \\25BC"; color: #0969da; }
td.num { text-align: right; white-space: nowrap; }
td.num .ci { display: block; font-size: 11px; color: #6e7781; }
td.na { color: #8c959f; text-align: right; }
td.name { position: sticky; left: 0; background: #fff; font-weight: 600; white-space: nowrap; z-index: 1; }
th.name { position: sticky; left: 0; z-index: 2; }
tr.ref td { font-style: italic; color: #6e7781; background: #f6f8fa; font-weight: normal; }
tr.ref td.name { background: #f6f8fa; }
tr.ref td.name::after { content: " (reference)"; font-size: 11px; }
tbody tr:hover td { background: #fff8c5; }
td.reason { white-space: pre-wrap; overflow-wrap: anywhere; max-width: 60rem; }
table.rejected td:first-child { font-weight: 600; overflow-wrap: anywhere; max-width: 24rem; }
img.pareto { max-width: 100%; height: auto; border: 1px solid #d0d7de; border-radius: 4px; }
footer { margin-top: 2rem; font-size: 12px; }
""".strip()

SCRIPT = """
(function () {
  "use strict";
  function cellKey(cell) {
    var v = cell.getAttribute("data-v");
    return v === null ? cell.textContent.trim() : v;
  }
  function compare(kind, dir) {
    return function (a, b) {
      var x = a.key, y = b.key;
      if (kind === "num") {
        x = x === "" ? NaN : Number(x);
        y = y === "" ? NaN : Number(y);
        var xn = isNaN(x), yn = isNaN(y);
        if (xn || yn) { return xn === yn ? 0 : (xn ? 1 : -1); }
        return dir * (x - y);
      }
      if (x === "" || y === "") { return x === y ? 0 : (x === "" ? 1 : -1); }
      return dir * x.localeCompare(y, undefined, {numeric: true, sensitivity: "base"});
    };
  }
  function sortBy(table, head, col) {
    var now = head.getAttribute("aria-sort"), dir;
    if (now === "ascending") { dir = -1; }
    else if (now === "descending") { dir = 1; }
    else { dir = head.getAttribute("data-first") === "descending" ? -1 : 1; }
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute("aria-sort"); }
    head.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var body = table.tBodies[0], rows = [];
    for (var r = 0; r < body.rows.length; r++) {
      rows.push({row: body.rows[r], key: cellKey(body.rows[r].cells[col])});
    }
    rows.sort(compare(head.getAttribute("data-kind"), dir));
    for (var k = 0; k < rows.length; k++) { body.appendChild(rows[k].row); }
  }
  var tables = document.querySelectorAll("table.board");
  for (var t = 0; t < tables.length; t++) {
    (function (table) {
      var heads = table.tHead.rows[0].cells;
      for (var c = 0; c < heads.length; c++) {
        (function (head, col) {
          head.tabIndex = 0;
          head.addEventListener("click", function () { sortBy(table, head, col); });
          head.addEventListener("keydown", function (e) {
            if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, head, col); }
          });
        })(heads[c], c);
      }
    })(tables[t]);
  }
})();
""".strip()


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _is_missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _float(value: Any) -> float:
    if _is_missing(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value)


def metric_columns(board: pd.DataFrame) -> list[str]:
    """The board's metrics in reading order (then the record's order, then the board's), leaving out
    any metric no entry has a value for."""
    present = [c for c in board.columns if f"{c}_lo" in board.columns and f"{c}_hi" in board.columns]
    order = [m for m in (*READING_ORDER, *METRIC_NAMES) if m in present]
    order += [m for m in present if m not in order]
    order = list(dict.fromkeys(order))
    return [m for m in order if pd.to_numeric(board[m], errors="coerce").notna().any()]


def safe_href(link: Any) -> str | None:
    """A relative link as an escaped-ready URL, or None for no link (empty, absolute, or with a scheme:
    a submission must not point the reader anywhere off the board's own folder)."""
    link = _text(link).strip()
    if not link or link.startswith(("/", "\\")) or _SCHEME.match(link) or any(ord(ch) < 32 for ch in link):
        return None
    return quote(link.replace("\\", "/"), safe="/._-~")


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _metric_cell(row: pd.Series, metric: str) -> str:
    value, lo, hi = (_float(row.get(metric + suffix)) for suffix in ("", "_lo", "_hi"))
    if math.isnan(value):
        return '<td class="na" data-v="">n/a</td>'
    ci = "" if math.isnan(lo) or math.isnan(hi) else f' <span class="ci">[{_fmt(lo)}, {_fmt(hi)}]</span>'
    return f'<td class="num" data-v="{value!r}"><span class="v">{_fmt(value)}</span>{ci}</td>'


def _name_cell(row: pd.Series) -> str:
    name = _esc(_text(row.get("name")))
    href = safe_href(row.get("config"))
    inner = f'<a href="{_esc(href)}" title="this entry\'s config">{name}</a>' if href else name
    return f'<td class="name" data-v="{name}">{inner}</td>'


def _fixed_cell(row: pd.Series, column: str, kind: str) -> str:
    if column == "name":
        return _name_cell(row)
    if kind == "num":
        x = _float(row.get(column))
        if math.isnan(x):
            return '<td class="na" data-v="">n/a</td>'
        shown = str(int(x)) if x.is_integer() else _fmt(x)
        return f'<td class="num" data-v="{x!r}">{shown}</td>'
    return f"<td>{_esc(_text(row.get(column)))}</td>"


def _header_cell(label: str, kind: str, better: bool | None = None, extra_class: str = "") -> str:
    attrs = f' data-kind="{kind}"'
    if better is not None:
        attrs += f' data-first="{"descending" if better else "ascending"}"'
        hint = "higher is better" if better else "lower is better"
        arrow = f' <span class="better" title="{hint}">{"&#8593;" if better else "&#8595;"}</span>'
    else:
        hint, arrow = "", ""
    title = f"{hint}; click to sort" if hint else "click to sort"
    cls = f' class="{extra_class}"' if extra_class else ""
    # a break opportunity after each "/" keeps long metric names narrow
    text = _esc(label).replace("/", "/<wbr>")
    return f'<th scope="col"{cls}{attrs} title="{_esc(title)}">{text}{arrow}</th>'


def _board_table(track: str, rows: pd.DataFrame, metrics: list[str]) -> str:
    heads = [_header_cell(label, kind, extra_class="name" if col == "name" else "")
             for col, label, kind in FIXED_COLUMNS]
    heads += [_header_cell(m, "num", better_direction(m)) for m in metrics]
    body = []
    for _, row in rows.iterrows():
        is_ref = _text(row.get("track")) == REFERENCE
        cells = [_fixed_cell(row, col, kind) for col, _, kind in FIXED_COLUMNS]
        cells += [_metric_cell(row, m) for m in metrics]
        cls = ' class="ref"' if is_ref else ' class="entry"'
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="board" id="board-{_esc(track)}" data-track="{_esc(track)}">'
        f"<thead><tr>{''.join(heads)}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table></div>"
    )


def _rejected_table(rejected: pd.DataFrame) -> str:
    if rejected is None or len(rejected) == 0:
        return '<p class="muted" id="no-rejected">No submission was rejected.</p>'
    rows = [
        f"<tr><td>{_esc(_text(r.get('submission')))}</td><td class=\"reason\">{_esc(_text(r.get('reason')))}</td></tr>"
        for _, r in rejected.iterrows()
    ]
    return (
        '<div class="scroll"><table class="rejected" id="rejected">'
        '<thead><tr><th scope="col">submission</th><th scope="col">reason</th></tr></thead>\n<tbody>\n'
        + "\n".join(rows) + "\n</tbody></table></div>"
    )


def _plot_label(row: pd.Series) -> str:
    name = _text(row.get("name")) or _text(row.get("strategy")) or "?"
    if _text(row.get("track")) not in (REFERENCE, "intervention"):
        name = f"{name} [{_text(row.get('track'))}]"
    # matplotlib reads text between two "$" as mathtext, which a hostile name could make fail to parse
    return name.replace("$", r"\$")


def pareto_png(board: pd.DataFrame) -> bytes | None:
    """render.plot_pareto of the board (None when no entry has both axes' values)."""
    needed = [PARETO_X, PARETO_Y, *(f"{m}_{s}" for m in (PARETO_X, PARETO_Y) for s in ("lo", "hi"))]
    if any(c not in board.columns for c in needed):
        return None
    table = pd.DataFrame({
        "strategy": [_plot_label(row) for _, row in board.iterrows()],
        "policy_kind": [REFERENCE if t == REFERENCE else "model" for t in _column(board, "track")],
        "preset": _column(board, "preset"),
    })
    for c in needed:
        table[c] = pd.to_numeric(board[c], errors="coerce").to_numpy(float)
    if not table[[PARETO_X, PARETO_Y]].notna().all(axis=1).any():
        return None
    return plot_pareto(table)


def _paragraphs(text: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return "\n".join(f"<p{attr}>{_esc(p.strip())}</p>" for p in re.split(r"\n\s*\n", text) if p.strip())


def _column(board: pd.DataFrame, name: str) -> list[str]:
    """A column as text, '' for missing values or a missing column."""
    return [_text(v) for v in board[name]] if name in board.columns else [""] * len(board)


def _tracks(found: list[str]) -> list[str]:
    extra = sorted({t for t in found if t and t not in TRACKS and t != REFERENCE})
    return [*TRACKS, *extra]


def render_index(board: pd.DataFrame, rejected: pd.DataFrame, *, title: str = "MedSafetyWorld leaderboard",
                 notes: str = "") -> str:
    """The whole leaderboard as one HTML page that loads nothing from anywhere.

    `board`: one row per entry with `track` (intervention, model or reference), `name`, `strategy`,
    `preset`, `seeds`, `config` (a relative link, may be empty), `recomputed`, and per metric `m` the
    columns `m`, `m_lo`, `m_hi`. `rejected`: `submission`, `reason`.
    """
    board = board.reset_index(drop=True)
    metrics = metric_columns(board)
    track_of = np.array(_column(board, "track"), dtype=object)
    references = board[track_of == REFERENCE]
    presets = sorted({p for p in _column(board, "preset") if p})

    sections = []
    for track in _tracks(list(track_of)):
        entries = board[track_of == track]
        rows = pd.concat([entries, references]) if len(references) else entries
        count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        empty = "" if len(entries) else " No submission on this track yet; the reference policies are shown alone."
        blurb = TRACK_BLURBS.get(track, "")
        sections.append(
            f'<section id="track-{_esc(track)}">\n<h2>{_esc(TRACK_TITLES.get(track, f"Track {track}"))}</h2>\n'
            f'<p class="muted">{_esc(blurb)} {count}, plus {len(references)} reference '
            f"polic{'y' if len(references) == 1 else 'ies'}.{_esc(empty)}</p>\n"
            + _board_table(track, rows, metrics) + "\n</section>"
        )

    png = pareto_png(board)
    if png is None:
        plot = f'<p class="muted" id="no-pareto">No entry has both {_esc(PARETO_X)} and {_esc(PARETO_Y)}.</p>'
    else:
        data = base64.b64encode(png).decode("ascii")
        plot = (f'<img class="pareto" id="pareto" src="data:image/png;base64,{data}" '
                f'alt="Safety-utility Pareto plot: {_esc(PARETO_X)} against {_esc(PARETO_Y)} for every entry">')

    n_rejected = 0 if rejected is None else len(rejected)
    rejected_text = (f"{n_rejected} submission{'' if n_rejected == 1 else 's'} failed a check and "
                     f"{'is' if n_rejected == 1 else 'are'} not ranked; each is shown with the first check it failed.")
    style, script = CSS, SCRIPT
    csp = (f"default-src 'none'; img-src data:; style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; "
           "base-uri 'none'; form-action 'none'")
    preset_text = f" Preset: {', '.join(presets)}." if presets else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{_esc(title)}</title>
<link rel="icon" href="data:,">
<style>{style}</style>
</head>
<body>
<header>
<h1>{_esc(title)}</h1>
<p class="muted">{_esc(preset_text.strip())} The board re-scores every submission's raw responses and
recomputes its metrics; the <em>recomputed</em> column says which numbers it recomputed (metrics read from
log-probabilities or hidden states need the submission's model weights). A cell is the value and, below it,
[lo, hi]: the 95% bootstrap interval over probes for one seed, mean &#177; 1 std across seeds for several.
&#8593; higher is better, &#8595; lower is better. Click a column header to sort (best first), again to
reverse. <em>Italic grey rows</em> are reference policies that need no training, shown in every table as
anchors. A name links to the entry's config.</p>
{_paragraphs(notes, "notes")}
</header>
<main>
{chr(10).join(sections)}
<section id="pareto-section">
<h2>Safety-utility trade-off</h2>
<p class="muted">Unsafe action rate on held-out pairs against utility; best is top left.</p>
{plot}
</section>
<section id="rejected-section">
<h2>Rejected submissions</h2>
<p class="muted">{rejected_text}</p>
{_rejected_table(rejected)}
</section>
</main>
<footer class="muted">{_esc(title)}: generated by medsafetyworld; this page loads nothing from the network.</footer>
<script>{script}</script>
</body>
</html>
"""

