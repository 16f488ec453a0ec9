"""A rebuild's tables against the committed reference: which cells differ by more than the
seed spread."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

_CELL = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
                   r"\s*(?:±\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?\s*$")
# columns that measure the machine, not the method: never compared
MACHINE_COLUMNS = ("s/round", "seconds", "hours")


def parse_cell(value: object) -> tuple[float, float | None] | None:
    """``12.5`` -> (12.5, None); ``"12.5 ± 1.5"`` -> (12.5, 1.5); anything else -> None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if pd.isna(value) else (float(value), None)
    m = _CELL.match(str(value))
    if not m:
        return None
    return float(m.group(1)), None if m.group(2) is None else float(m.group(2))


def _same(a: object, b: object) -> bool:
    """Equality of two non-numeric cells, missing values equal to each other."""
    return (pd.isna(a) and pd.isna(b)) if pd.isna(a) or pd.isna(b) else str(a) == str(b)


def compare_tables(rebuilt: pd.DataFrame, reference: pd.DataFrame,
                   tolerance: float) -> pd.DataFrame:
    """The cells where ``rebuilt`` differs from ``reference`` by more than the spread.

    Tables are compared row by row in order (a rebuild of one profile writes its rows in
    the reference's order). Two numbers differ when they lie further apart than the
    larger sd of the two ("mean ± sd" cells) or, where neither has an sd (single-seed
    numbers), than ``tolerance``; other cells (text, ">5", missing) differ when they are not
    equal. Columns or rows on one side only are listed too; timings are not compared."""
    diffs: list[dict] = []

    def note(row: str, column: str, ref: object, new: object, allowed: float | None = None):
        diffs.append({"row": row, "column": column, "reference": ref, "rebuilt": new,
                      "allowed": allowed})

    for col in reference.columns.difference(rebuilt.columns, sort=False):
        note("–", col, "column", "missing")
    for col in rebuilt.columns.difference(reference.columns, sort=False):
        note("–", col, "missing", "column")
    if len(rebuilt) != len(reference):
        note("–", "–", f"{len(reference)} rows", f"{len(rebuilt)} rows")
    labels = [c for c in reference.columns if reference[c].map(
        lambda v: isinstance(v, str) and parse_cell(v) is None).all()]
    shared = [c for c in reference.columns if c in rebuilt.columns
              and c not in MACHINE_COLUMNS]
    for i in range(min(len(rebuilt), len(reference))):
        ref, new = reference.iloc[i], rebuilt.iloc[i]
        row = " / ".join(str(ref[c]) for c in labels) or f"row {i + 1}"
        for col in shared:
            a, b = parse_cell(ref[col]), parse_cell(new[col])
            if a is None or b is None:
                if not _same(ref[col], new[col]):
                    note(row, col, ref[col], new[col])
                continue
            sds = [sd for _, sd in (a, b) if sd is not None]
            allowed = max(sds) if sds else tolerance
            if abs(a[0] - b[0]) > allowed + 1e-9:
                note(row, col, ref[col], new[col], round(allowed, 4))
    return pd.DataFrame(diffs, columns=["row", "column", "reference", "rebuilt", "allowed"])


def compare_folders(rebuilt: str | os.PathLike, reference: str | os.PathLike,
                    tolerance: float, skip: tuple[str, ...] = ("table_jobs",)) -> str:
    """A Markdown report, table by table, of where the tables (``*.csv``) in ``rebuilt``
    differ from those in ``reference`` by more than the spread (see ``compare_tables``);
    the tables named in ``skip`` (job times: they vary with the machine) are left out."""
    rebuilt, reference = Path(rebuilt), Path(reference)
    refs = [f for f in sorted(reference.glob("*.csv")) if f.stem not in skip] \
        if reference.is_dir() else []
    if not refs:
        return (f"# Comparison with the reference\n\nNo reference tables in {reference}: "
                f"nothing to compare.\n")
    lines = [f"# Comparison with the reference ({reference})\n",
             f"A cell differs when the rebuild and the reference are further apart than the "
             f"larger of their seed sds (mean ± sd cells) or, for single-seed numbers, "
             f"{tolerance}.\n"]
    for ref_csv in refs:
        new_csv = rebuilt / ref_csv.name
        if not new_csv.exists():
            lines.append(f"## {ref_csv.stem}: not rebuilt\n")
            continue
        diffs = compare_tables(pd.read_csv(new_csv), pd.read_csv(ref_csv), tolerance)
        if diffs.empty:
            lines.append(f"## {ref_csv.stem}: within the spread\n")
        else:
            lines.append(f"## {ref_csv.stem}: {len(diffs)} cell(s) differ\n")
            lines.append(diffs.astype(object).where(diffs.notna(), None)
                         .to_markdown(index=False, missingval="–") + "\n")
    return "\n".join(lines)
