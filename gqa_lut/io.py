"""Load any table file: gqa-sim's versioned JSON or the GQA-LUT reference layout."""

from __future__ import annotations

from intsim import PWLTable
from intsim.fileio import read_json
from intsim.table import FILE_FORMAT

from .gqa_json import table_from_gqa_dict


def load_any(path, **gqa_options) -> PWLTable:
    d = read_json(path, "table")
    if isinstance(d, dict) and d.get("format") == FILE_FORMAT:
        return PWLTable.from_dict(d, source=str(path))
    return table_from_gqa_dict(d, source=str(path), **gqa_options)
