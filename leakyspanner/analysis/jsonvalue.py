"""Values from frames and dataclasses made JSON-ready: one rule for verdicts and payloads."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["json_value"]


def json_value(value: Any) -> Any:
    """``value`` with numpy scalars as Python ones and NA, NaT, NaN and inf as None.

    A ``pd.Timestamp`` becomes Unix seconds; dicts, lists and tuples are
    converted item by item (a tuple becomes a list, as JSON would make it).
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value
