"""Load any table file: gqa-sim's versioned JSON or the GQA-LUT reference layout."""

from __future__ import annotations

from intsim import GQAError, PWLTable
from intsim.datapath import check_segment_rule
from intsim.fileio import read_json
from intsim.table import FILE_FORMAT

from .gqa_json import table_from_gqa_dict


def load_any(path, segment_rule: str | None = None, **gqa_options) -> PWLTable:
    d = read_json(path, "table")
    if isinstance(d, dict) and d.get("format") == FILE_FORMAT:
        table = PWLTable.from_dict(d, source=str(path))
        if segment_rule is not None and check_segment_rule(segment_rule) != table.datapath.segment_rule:
            raise GQAError("segment_rule", f"{segment_rule!r} differs from the {table.datapath.segment_rule!r} "
                           f"stored in {path}", "gqa-sim table files carry their own rule; the option is for "
                           "GQA-LUT files")
        return table
    return table_from_gqa_dict(d, source=str(path), segment_rule=segment_rule, **gqa_options)
