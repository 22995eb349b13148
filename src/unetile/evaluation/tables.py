"""The score tables as text and HTML cells: the cells table's columns, rows of aligned text,
and the table of the true cells by size (`metrics.sizes`). Shared by `unetile evaluate`'s
printout (evaluate.py, volumes.py) and its HTML reports (report.py, volume_report.py)."""

from __future__ import annotations

import html

#: Columns of the cells tables (text and HTML): (key in a `metrics.cell_scores` summary, heading).
CELL_COLUMNS = (("n_true", "true"), ("n_pred", "pred"), ("ap_50", "AP@0.5"), ("ap_75", "AP@0.75"),
                ("mean_ap", "mAP"), ("f1_50", "F1@0.5"), ("pq_50", "PQ"), ("merged", "merged"), ("split", "split"))


def cell_values(scores: dict) -> list[str]:
    """The formatted values of `CELL_COLUMNS` in one `metrics.cell_scores` summary."""
    return [str(scores[k]) if isinstance(scores[k], int) else f"{scores[k]:.4f}" for k, _ in CELL_COLUMNS]


def cell_rows(result: dict) -> list[tuple[str, list[str]]]:
    """(name, formatted values of `CELL_COLUMNS`) for each image and the pooled row."""
    cells = result["cells"]
    names = [str(e["name"]) for e in result["images"]] + ["pooled"]
    return [(name, cell_values(s)) for name, s in zip(names, cells["images"] + [cells["pooled"]])]


def aligned(rows: list[tuple[str, list[str]]]) -> list[str]:
    """(name, values) rows as text lines: names left-aligned, values right-aligned in columns."""
    widths = [max(len(r[0]) for r in rows)] + [max(len(r[1][i]) for r in rows) for i in range(len(rows[0][1]))]
    return ["  ".join([name.ljust(widths[0])] + [v.rjust(w) for v, w in zip(values, widths[1:])])
            for name, values in rows]


#: Headings of the size tables (text and HTML), one row per bin of `sizes.size_table`.
SIZE_HEADINGS = ("diameter / median", "diameter px", "true cells", "found", "merged", "missed")


def bin_span(low: float | None, high: float | None, spec: str = "g") -> str:
    """A size bin as text (``spec`` formats each edge): "low-high", ">= low" for the open last
    bin, "-" where unknown."""
    if low is None:
        return "-"
    return f">= {low:{spec}}" if high is None else f"{low:{spec}}-{high:{spec}}"


def share(count: int, total: int) -> str:
    """``count`` with its share of ``total``: "12 (40%)"; "0" for an empty bin."""
    return f"{count} ({count / total:.0%})" if total else "0"


def size_rows(by_size: dict) -> list[tuple[str, list[str]]]:
    """(bin, [its diameters in px, true cells, found, merged, missed]) for each bin of a
    `sizes.size_table`; the counts with their share of the bin's cells."""
    return [(bin_span(r["low"], r["high"]),
             [bin_span(r["low_px"], r["high_px"], ".1f"), str(r["cells"]),
              *(share(r[k], r["cells"]) for k in ("found", "merged", "missed"))]) for r in by_size["rows"]]


def size_note(by_size: dict) -> tuple[str, str]:
    """(title, legend) of a size table: what its bins and its columns mean."""
    shape, unit = ("disc of their area", "px") if by_size["ndim"] == 2 else ("ball of their volume", "voxels")
    median = by_size["median_diameter"]
    return (f"true cells by size (diameter of the {shape}; "
            + ("no true cells)" if median is None else f"median {median:.1f} {unit})"),
            "(found: matched at IoU 0.5; merged: not found, joined with another true cell; missed: neither)")


def size_headings(by_size: dict) -> list[str]:
    """`SIZE_HEADINGS` in the table's unit (px, or voxels for volumes)."""
    return [h.replace("px", "px" if by_size["ndim"] == 2 else "voxels") for h in SIZE_HEADINGS]


def format_size_table(by_size: dict) -> str:
    """A `sizes.size_table` as fixed-width text between its `size_note` lines (the title alone
    where there is no true cell)."""
    if by_size["median_diameter"] is None:
        return size_note(by_size)[0]
    headings = size_headings(by_size)
    text = aligned([(headings[0], headings[1:]), *size_rows(by_size)])
    title, legend = size_note(by_size)
    return "\n".join([title, text[0], "-" * len(text[0]), *text[1:], legend])


def size_table_html(by_size: dict) -> str:
    """A `sizes.size_table` as an HTML table under its `size_note` (the note alone where there
    is no true cell)."""
    title, legend = size_note(by_size)
    if by_size["median_diameter"] is None:
        return f'<p class="meta">{html.escape(title.capitalize())}</p>'
    name, *headings = (html.escape(h) for h in size_headings(by_size))
    head = "".join(f"<th>{h}</th>" for h in headings)
    rows = "".join(f'<tr><td class="name">{html.escape(span)}</td>{"".join(f"<td>{v}</td>" for v in values)}</tr>'
                   for span, values in size_rows(by_size))
    return (f'<p class="meta">{html.escape(title.capitalize())} {html.escape(legend)}</p>'
            f'<table class="metrics sizes"><thead><tr><th class="name">{name}</th>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")
