"""Rich at the edge for `catnet check`: the report that catnet.curation.check returns (plain
data, JSON-ready) as counts per split and class, then one table per kind of problem."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from catnet.curation.check import TINY_SIDE
from catnet.data.folders import printable

SHOWN = 20
SECTIONS = [  # key, title, columns, row
    ("unreadable", "Unreadable (training skips these)", ["path", "reason"],
     lambda e: [e["path"], e["reason"]]),
    ("leaks", "Same picture in more than one split", ["splits", "kind", "paths"],
     lambda e: [", ".join(e["splits"]), e["kind"], "\n".join(e["paths"])]),
    ("duplicates", "Exact duplicates", ["copies", "paths"], lambda g: [str(len(g)), "\n".join(g)]),
    ("near_duplicates", "Near duplicates", ["pictures", "paths"],
     lambda g: [str(len(g)), "\n".join(g)]),
    ("lying_extensions", "Extension disagrees with content", ["path", "extension", "format"],
     lambda e: [e["path"], e["extension"], e["format"]]),
    ("odd_modes", "Unusual colour modes (converted to RGB)", ["path", "mode"],
     lambda e: [e["path"], e["mode"]]),
    ("tiny", f"Tiny pictures (side < {TINY_SIDE} px)", ["path", "size"],
     lambda e: [e["path"], f"{e['width']}x{e['height']}"]),
]  # fmt: skip


def print_check(report: dict[str, Any], console: Console) -> None:
    """Counts per split and class, then one table per kind of problem (first SHOWN rows)."""
    head = f"{report['root']}: {report['layout']} layout, {report['n_images']} readable pictures"
    head += f" in {report['n_files']} files, cat class {report['positive']!r}"
    console.print(Text(printable(head)))
    counts = Table()
    counts.add_column("class")
    for split in report["counts"]:
        counts.add_column(split, justify="right")
    for name in report["classes"]:
        counts.add_row(
            Text(printable(name)), *(str(c.get(name, 0)) for c in report["counts"].values())
        )
    console.print(counts)
    for key, title, columns, row in SECTIONS:
        items = report[key]
        if not items:
            console.print(f"[green]ok[/] {title.split(' (')[0].lower()}: none")
            continue
        console.print(f"[bold yellow]{title}: {len(items)}[/]")  # not a table title: it wraps
        table = Table()
        for column in columns:
            table.add_column(column)
        for item in items[:SHOWN]:
            table.add_row(*(Text(printable(cell)) for cell in row(item)))
        console.print(table)
        if len(items) > SHOWN:
            console.print(f"... and {len(items) - SHOWN} more")
    if report.get("leak_note"):
        console.print(Text(f"note: {report['leak_note']}", style="dim"))
