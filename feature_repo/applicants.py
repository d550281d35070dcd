"""Credit applicants (credit_default): monthly profiles, plus the loan asked for at request time."""

from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

# Written by prepare@credit_default. Absolute (DuckDB reads paths from the working directory),
# resolved where `feast apply` runs: every process that reads the store must see this path.
DATA = Path(__file__).resolve().parent.parent / "data" / "raw"

applicant = Entity(
    name="applicant",
    join_keys=["applicant_id"],
    value_type=ValueType.STRING,
    description="A credit applicant (ids derived from the source's row order, see README)",
)

applicant_monthly_source = FileSource(
    name="applicant_monthly_source",
    path=str(DATA / "credit_default" / "applicant_monthly.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Monthly applicant profiles, written by prepare@credit_default",
)

applicant_profile_fv = FeatureView(
    name="applicant_profile",
    entities=[applicant],
    ttl=timedelta(days=45),
    schema=[
        Field(name="applicant_id", dtype=String),  # the join key: declared, not inferred
        Field(name="Seniority", dtype=Int64, description="years with the current employer"),
        Field(name="Home", dtype=String),
        Field(name="Age", dtype=Int64),
        Field(name="Marital", dtype=String),
        Field(name="Records", dtype=String, description="past arrears on record"),
        Field(name="Job", dtype=String),
        Field(name="Expenses", dtype=Int64),
        Field(name="Income", dtype=Float64),
        Field(name="Assets", dtype=Float64),
        Field(name="Debt", dtype=Float64),
    ],
    online=True,
    source=applicant_monthly_source,
    tags={"model": "credit_default"},
)

# The loan being applied for: known only when the request arrives
loan_request_source = RequestSource(
    name="loan_request",
    schema=[
        Field(name="Amount", dtype=Int64, description="amount requested"),
        Field(name="Price", dtype=Int64, description="price of the goods financed"),
        Field(name="Time", dtype=Int64, description="term in months"),
    ],
)


@on_demand_feature_view(
    sources=[applicant_profile_fv, loan_request_source],
    schema=[
        Field(name="loan_to_value", dtype=Float64),
        Field(name="installment", dtype=Float64),
        Field(name="installment_to_income", dtype=Float64),
    ],
    mode="python",
    description="Ratios of the requested loan to the goods and to the applicant's income",
)
def loan_ratios_odfv(inputs: dict[str, Any]) -> dict[str, Any]:
    # Self-contained: Feast stores the function in its registry and runs it in the services
    def ratio(num: Any, den: Any) -> float | None:
        return None if num is None or den is None or den != den or den <= 0 else num / den

    installments = [ratio(a, t) for a, t in zip(inputs["Amount"], inputs["Time"], strict=True)]
    return {
        "loan_to_value": [
            ratio(a, p) for a, p in zip(inputs["Amount"], inputs["Price"], strict=True)
        ],
        "installment": installments,
        "installment_to_income": [
            ratio(i, n) for i, n in zip(installments, inputs["Income"], strict=True)
        ],
    }


credit_default_v1 = FeatureService(
    name="credit_default_v1",
    features=[applicant_profile_fv, loan_ratios_odfv],
    description="Profile and loan-ratio features of credit_default (params.yaml)",
    tags={"model": "credit_default"},
)
