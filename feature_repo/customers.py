"""Telco customers (churn): monthly account snapshots, served by customer_id."""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

# Written by prepare@churn. Absolute (DuckDB reads paths from the working directory),
# resolved where `feast apply` runs: every process that reads the store must see this path.
DATA = Path(__file__).resolve().parent.parent / "data" / "raw"

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A telco customer (ids derived from the source's row order, see README)",
)

# One row per customer and month: the account as the monthly snapshot job saw it. Rows
# re-issued by a billing correction share the event time and have a later `created`.
customer_monthly_source = FileSource(
    name="customer_monthly_source",
    path=str(DATA / "churn" / "customer_monthly.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Monthly customer snapshots, written by prepare@churn",
)

customer_monthly_fv = FeatureView(
    name="customer_monthly",
    entities=[customer],
    # a snapshot older than one missed monthly job (and a margin) is stale
    ttl=timedelta(days=45),
    schema=[
        Field(name="customer_id", dtype=String),  # the join key: declared, not inferred
        Field(name="female", dtype=Int64),
        Field(name="senior_citizen", dtype=Int64),
        Field(name="partner", dtype=Int64),
        Field(name="dependents", dtype=Int64),
        Field(name="tenure", dtype=Int64, description="months as a customer"),
        Field(name="phone_service", dtype=Int64),
        Field(name="multiple_lines", dtype=String),
        Field(name="internet_service", dtype=String),
        Field(name="online_security", dtype=String),
        Field(name="online_backup", dtype=String),
        Field(name="device_protection", dtype=String),
        Field(name="tech_support", dtype=String),
        Field(name="streaming_tv", dtype=String),
        Field(name="streaming_movies", dtype=String),
        Field(name="contract", dtype=String),
        Field(name="paperless_billing", dtype=Int64),
        Field(name="payment_method", dtype=String),
        Field(name="monthly_charges", dtype=Float64),
        Field(name="total_charges", dtype=Float64, description="null before the first bill"),
    ],
    online=True,
    source=customer_monthly_source,
    tags={"model": "churn"},
)

# The feature set churn is trained and served on; a changed set is a new version (churn_v2)
churn_v1 = FeatureService(
    name="churn_v1",
    features=[customer_monthly_fv],
    description="Account features of the churn model (params.yaml models.churn)",
    tags={"model": "churn"},
)
