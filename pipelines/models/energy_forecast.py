"""Energy forecast: tomorrow's half-hourly electricity demand in Victoria, Australia (2014).

The source is one year of half-hourly demand (GW), temperature (°C, Melbourne) and a working
day flag, from 2014-01-01 00:00. `records` cuts it into one record per midnight: the week
of demand before it, the day's temperatures (a forecast at serving time; the observed ones
here, as in the source) and calendar, with the 48 half-hours of demand after it as target.
Boosted trees on lags, calendar and temperature (pipelines/estimators/forecasting.py); tested on
the last half of the year, after everything trained on, and walk-forward by month.
"""

import numpy as np
import pandas as pd

from contract.catalog import ModelSpec
from pipelines.estimators.forecasting import DayAheadForecaster, Layout
from pipelines.flavors import sklearn as FLAVOR

__all__ = ["FLAVOR", "build", "records"]

START = pd.Timestamp("2014-01-01 00:00")  # the source's first half-hour (it has no time column)
STEPS_PER_DAY = 48
LAYOUT = Layout(
    history="demand_history",
    temperature="temperature",
    workday="workday",
    day_of_week="day_of_week",
)


def build(spec: ModelSpec) -> DayAheadForecaster:
    assert spec.target.horizon
    return DayAheadForecaster(
        LAYOUT, horizon=spec.target.horizon, steps_per_day=STEPS_PER_DAY, **spec.params
    )


def records(source: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """One record per midnight with a full week of demand before it and a day after it."""
    assert spec.target.horizon and spec.target.time
    back = (spec.fields[LAYOUT.history].shape or [0])[0]
    horizon = spec.target.horizon
    demand = source["Demand"].to_numpy(np.float64)
    temperature = source["Temperature"].to_numpy(np.float64)
    workday = source["WorkDay"].to_numpy(np.int64)
    origins = range(back, len(demand) - horizon + 1, STEPS_PER_DAY)
    times = [START + pd.Timedelta(minutes=30 * o) for o in origins]
    return pd.DataFrame(
        {
            spec.target.time: pd.to_datetime(times),
            LAYOUT.history: [demand[o - back : o] for o in origins],
            LAYOUT.temperature: [temperature[o : o + horizon] for o in origins],
            LAYOUT.workday: [int(workday[o]) for o in origins],
            LAYOUT.day_of_week: [t.dayofweek for t in times],
            spec.target.column: [demand[o : o + horizon] for o in origins],
        }
    )
