"""The drift run's column handling, without a registry."""

import pandas as pd

from contract import reference
from services.drift.detect import _usable
from tests.conftest import CATALOG


def test_a_column_without_values_is_skipped_with_the_reason() -> None:
    spec = CATALOG["house_prices"]
    columns = reference.columns(spec)
    ref = pd.DataFrame({c: [1.0, 2.0] for c in columns.numerical + columns.categorical})
    current = ref.copy()
    current["Misc_Feature"] = None  # a rarely filled field, in a small window
    ref["Alley"] = None
    usable, skipped = _usable(columns, current, ref)
    assert skipped == {
        "Misc_Feature": "no values in the window",
        "Alley": "no values in the reference",
    }
    assert "Misc_Feature" not in usable.categorical + usable.numerical
    assert reference.PREDICTION in usable.numerical
