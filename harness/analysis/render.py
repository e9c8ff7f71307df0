"""A seed-group summary (summary.py) as Markdown (GitHub), LaTeX (booktabs), HTML or CSV.

Cells read "mean ± std (n=k)": "± —" for a group of one run, no std where the runs agree exactly
(parameter counts), "(n=k)" where a metric is null in some runs; the best mean among comparable
rows is bold (summary.best_mask). The caption says which split the task metrics come from.
"""

from __future__ import annotations

import html
from typing import NamedTuple

import pandas as pd

from harness.analysis.summary import DASH, best_mask, key_text, split_of

FORMATS = ("md", "latex", "csv", "html")


class Cell(NamedTuple):
    """One table cell before formatting. std: "" none to show (key cell, identical runs), "—" one run."""
    mean: str
    std: str = ""
    note: str = ""
    bold: bool = False


def render(summary: pd.DataFrame, fmt: str = "md") -> str:
    """The summary as Markdown (GitHub), LaTeX (booktabs), HTML, or CSV.

    CSV is the long summary (keys, n, and mean/std/n columns per metric) whatever the layout, since
    that is what a program wants to read; the others pivot when the summary was made with `cols`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    if fmt == "csv":
        return summary.drop(columns="greater_is_better").to_csv(index=False)
    header, rows = _grid(summary)
    return {"md": _markdown, "latex": _latex, "html": _html}[fmt](header, rows, caption(summary))


def caption(summary: pd.DataFrame) -> str:
    a = summary.attrs
    names = ", ".join(a["labels"][m] for m in a["metrics"])
    splits = list(dict.fromkeys(filter(None, map(split_of, a["metrics"]))))
    where = f" Task metrics: {'; '.join(splits)}." if splits else ""
    if any(m.startswith("metrics.forget.") for m in a["metrics"]):
        where += (" Forgetting: perplexity on held-out general English (task.forget); before = the pretrained "
                  "model, increase = after - before.")
    text = f"Mean ± sample std over seeds; best per column in bold.{where} Metrics: {names}."
    if a["cols"]:
        text = f"Rows: {', '.join(a['by'])}; columns: {a['cols']}. {text} n = {_typical_n(summary)} per cell unless marked."
    return text


def _typical_n(summary: pd.DataFrame) -> int:
    return int(summary["n"].mode().max())


class Column(NamedTuple):
    label: str
    group: str | None = None  # the metric, above its columns in a multi-metric pivot
    numeric: bool = True      # right-aligned


def _grid(summary: pd.DataFrame) -> tuple[list[Column], list[list[Cell]]]:
    """Header and rows of cells, in the long layout or pivoted on `cols`."""
    a = summary.attrs
    by, cols, metrics = a["by"], a["cols"], a["metrics"]
    digits = {m: _digits(summary[f"{m}.mean"]) for m in metrics}
    bold = {m: best_mask(summary, m) for m in metrics}

    def cell(i, m, reference_n):
        mean, std, n = summary.at[i, f"{m}.mean"], summary.at[i, f"{m}.std"], int(summary.at[i, f"{m}.n"])
        if n == 0:
            return Cell(DASH, "")
        # one run: no std to give; identical runs (parameter counts): the mean says it all
        std_text = DASH if n == 1 else "" if std == 0 else _number(std, digits[m])
        note = f"(n={n})" if n != reference_n else ""
        return Cell(_number(mean, digits[m]), std_text, note, bool(bold[m][i]))

    keys = [Column(k, numeric=False) for k in by]
    if not cols:
        header = keys + [Column("n")] + [Column(a["labels"][m]) for m in metrics]
        rows = [[Cell(key_text(summary.at[i, k])) for k in by] + [Cell(str(summary.at[i, "n"]))]
                + [cell(i, m, summary.at[i, "n"]) for m in metrics] for i in summary.index]
        return header, rows

    column_values = list(dict.fromkeys(map(_key, summary[cols].sort_values(na_position="first"))))
    header = keys + [Column(column_label(cols, v), a["labels"][m] if len(metrics) > 1 else None)
                     for m in metrics for v in column_values]
    typical = _typical_n(summary)
    rows = []
    for _, part in summary.groupby(by, dropna=False, sort=False) if by else [(None, summary)]:
        i0 = part.index[0]
        row = [Cell(key_text(summary.at[i0, k])) for k in by]
        at = {_key(v): i for i, v in part[cols].items()}
        for m in metrics:
            row += [cell(at[v], m, typical) if v in at else Cell(DASH, "") for v in column_values]
        rows.append(row)
    return header, rows


def _key(value):
    return None if pd.isna(value) else value


def column_label(key: str, value) -> str:
    text = key_text(value)
    return text if key in ("method", "model", "task") else f"{key.rsplit('.', 1)[-1]}={text}"


def _digits(means: pd.Series) -> int:
    """Decimals for a metric column: counts get none, big numbers one, scores four."""
    values = means.dropna().abs()
    if values.empty or ((values % 1 == 0).all() and values.max() >= 1):
        return 0
    top = values.max()
    return 1 if top >= 100 else 3 if top >= 1 else 4


def _number(x: float, digits: int) -> str:
    return f"{x:,.{digits}f}"


def _cell_text(c: Cell, pm="±", dash=DASH, escape=lambda s: s) -> str:
    text = dash if c.mean == DASH else escape(c.mean)
    if c.std:
        text += f" {pm} " + (dash if c.std == DASH else escape(c.std))
    return text + (f" {escape(c.note)}" if c.note else "")


def _markdown(header, rows, caption_text) -> str:
    labels = [f"{c.group}: {c.label}" if c.group else c.label for c in header]
    body = [[_md_escape(_cell_text(c)) for c in row] for row in rows]
    body = [[f"**{t}**" if c.bold else t for t, c in zip(texts, row)] for texts, row in zip(body, rows)]
    labels = [_md_escape(l) for l in labels]
    widths = [max(3, *(len(t) for t in col)) for col in zip(labels, *body)]  # GitHub wants >= 1 dash per rule
    rule = ["-" * (w - 1) + ":" if c.numeric else ":" + "-" * (w - 1) for w, c in zip(widths, header)]
    line = lambda cells: "| " + " | ".join(t.ljust(w) for t, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([caption_text, "", line(labels), "|" + "|".join(f" {r.ljust(w)} " for r, w in zip(rule, widths)) + "|",
                      *map(line, body)]) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(columns, rows, number=str) -> str:
    """A plain GitHub table of `rows` under `columns`; `number` writes every cell that is not a
    string. A bare "|" (as in "max |diff|" or "||dW||_F") is escaped: it would end the cell."""
    def cell(value) -> str:
        return _md_escape(value if isinstance(value, str) else number(value))

    lines = ["| " + " | ".join(cell(str(c)) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex(header, rows, caption_text) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); a multi-metric pivot gets a two-level header."""
    align = "".join("r" if c.numeric else "l" for c in header)
    lines = ["% " + caption_text.replace("±", "+-"), f"\\begin{{tabular}}{{{align}}}", r"\toprule"]
    groups = [c.group for c in header]
    if any(groups):
        top, rules, col = [], [], 1
        for g, span in _runs(groups):
            top.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(g)}}}" if g else " & ".join([""] * span))
            if g:
                rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines += [" & ".join(top) + r" \\", "".join(rules)]
    lines.append(" & ".join(latex_escape(c.label) for c in header) + r" \\")
    lines.append(r"\midrule")
    for row in rows:
        texts = [_cell_text(c, pm=r"$\pm$", dash="---", escape=latex_escape) for c in row]
        lines.append(" & ".join(f"\\textbf{{{t}}}" if c.bold else t for t, c in zip(texts, row)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _runs(items):
    """[a, a, b] -> [(a, 2), (b, 1)]"""
    out = []
    for x in items:
        if out and out[-1][0] == x:
            out[-1] = (x, out[-1][1] + 1)
        else:
            out.append((x, 1))
    return out


def _html(header, rows, caption_text) -> str:
    esc = html.escape
    head = []
    groups = [c.group for c in header]
    if any(groups):
        head.append("<tr>" + "".join(f'<th colspan="{span}">{esc(g or "")}</th>' for g, span in _runs(groups)) + "</tr>")
    head.append("<tr>" + "".join(f"<th>{esc(c.label)}</th>" for c in header) + "</tr>")
    body = []
    for row in rows:
        tds = []
        for c, col in zip(row, header):
            text = esc(_cell_text(c))
            tds.append(f'<td class="{"num" if col.numeric else "key"}">' + (f"<strong>{text}</strong>" if c.bold else text) + "</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<table class="results">\n<caption>{esc(caption_text)}</caption>\n<thead>\n' + "\n".join(head)
            + "\n</thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n")


def render_failed(failed: pd.DataFrame, fmt: str = "md") -> str:
    """The runs left out of the table, one line each: path, status, error. Runs a packed search
    pruned (`status: pruned`) get a list of their own: they ended by design, not by a fault."""
    pruned = failed[failed["status"] == "pruned"]
    rest = failed[failed["status"] != "pruned"]
    parts = [_listing(rest, f"Not averaged: {len(rest)} run(s) that did not complete", fmt),
             _listing(pruned, f"Not averaged: {len(pruned)} run(s) pruned by successive halving "
                              "(stopped at a rung; metrics so far in their records)", fmt)]
    return ("\n" if fmt == "md" else "").join(p for p in parts if p)


def _listing(failed: pd.DataFrame, title: str, fmt: str) -> str:
    if failed.empty:
        return ""
    items = [(str(r.path), str(r.status), "" if r.error is None or pd.isna(r.error) else str(r.error))
             for r in failed.itertuples()]
    if fmt == "latex":
        return "\n".join([f"% {title}:"] + [f"%   {p}: {s}" + (f": {e}" if e else "") for p, s, e in items]) + "\n"
    if fmt == "html":
        lis = "".join(f"<li><code>{html.escape(p)}</code>: {html.escape(s)}" + (f": {html.escape(e)}" if e else "") + "</li>\n"
                      for p, s, e in items)
        return f'<p class="failed">{html.escape(title)}:</p>\n<ul class="failed">\n{lis}</ul>\n'
    if fmt == "csv":
        return pd.DataFrame(items, columns=["path", "status", "error"]).to_csv(index=False)
    return "\n".join([f"{title}:", ""] + [f"- `{p}`: {s}" + (f": {_md_escape(e)}" if e else "") for p, s, e in items]) + "\n"
