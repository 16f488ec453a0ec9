"""A rebuild's tables against the committed reference: which cells differ by more than the
seed spread."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

_CELL = re.compile(r"^\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*(?:±\s*([0-9.]+(?:e-?[0-9]+)?))?\s*$")


def parse_cell(value: object) -> tuple[float, float | None] | None:
    """``12.5`` -> (12.5, None); ``"12.5 ± 1.5"`` -> (12.5, 1.5); anything else -> None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if pd.isna(value) else (float(value), None)
    m = _CELL.match(str(value))
    if not m:
        return None
    return float(m.group(1)), None if m.group(2) is None else float(m.group(2))


def compare_tables(rebuilt: pd.DataFrame, reference: pd.DataFrame,
                   tolerance: float) -> pd.DataFrame:
    """The cells where ``rebuilt`` differs from ``reference`` by more than the spread.

    Rows are matched by their label columns (those with no number in the reference); a
    numeric cell differs when |rebuilt - reference| exceeds the larger sd of the two
    ("mean ± sd" cells) or, for a single-seed number, ``tolerance``. Rows or columns on one
    side only are listed too."""
    numeric = [c for c in reference.columns
               if reference[c].map(lambda v: parse_cell(v) is not None).all()]
    labels = [c for c in reference.columns if c not in numeric]

    def keyed(df: pd.DataFrame) -> dict[tuple, pd.Series]:
        return {tuple(str(r[c]) for c in labels if c in df.columns): r for _, r in df.iterrows()}

    ref, new = keyed(reference), keyed(rebuilt)
    diffs = []
    for key in [k for k in ref if k not in new]:
        diffs.append({"row": " / ".join(key), "column": "–", "reference": "row",
                      "rebuilt": "missing", "allowed": None})
    for key in [k for k in new if k not in ref]:
        diffs.append({"row": " / ".join(key), "column": "–", "reference": "missing",
                      "rebuilt": "row", "allowed": None})
    for key in (k for k in ref if k in new):
        for col in numeric:
            a = parse_cell(ref[key][col])
            b = parse_cell(new[key].get(col)) if col in new[key] else None
            if b is None:
                diffs.append({"row": " / ".join(key), "column": col,
                              "reference": ref[key][col], "rebuilt": new[key].get(col),
                              "allowed": None})
                continue
            sds = [sd for _, sd in (a, b) if sd is not None]
            allowed = max(sds) if sds else tolerance
            if abs(a[0] - b[0]) > allowed:
                diffs.append({"row": " / ".join(key), "column": col,
                              "reference": ref[key][col], "rebuilt": new[key][col],
                              "allowed": round(allowed, 4)})
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
