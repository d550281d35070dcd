"""Entity-keyed /predict bodies of Feast-backed models: parse, look up, turn into records.

    {"customer_ids": ["C00001", "C00002"]}                          # no request-time fields
    {"entities": [{"applicant_id": "A00001", "Amount": 800, ...}]}  # with them

Each entity is answered in place: a prediction with the time of its features (and `stale`
when they are older than their view's TTL), or its own error: 404 for an entity the online
store does not know, 400 for a malformed row. The other entities are still served.
"""

import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from contract.catalog import ModelSpec
from services.api.errors import InputError, field_error
from services.api.inputs import describe_errors, entity_model
from services.api.telemetry import ServiceMetrics

if TYPE_CHECKING:
    from services.api.features import Fetched, OnlineFeatures


class EntityRequests:
    """The entity-keyed side of one model service."""

    def __init__(self, spec: ModelSpec, online: "OnlineFeatures", metrics: ServiceMetrics) -> None:
        assert spec.features is not None
        self.spec, self.online, self.metrics = spec, online, metrics
        self.key = spec.features.entity
        self.ids_field = f"{self.key}s"  # customer_id -> customer_ids
        self.row_model = entity_model(spec)
        self._markers = tuple(f'"{name}"'.encode() for name in self.markers(spec))

    @staticmethod
    def markers(spec: ModelSpec) -> set[str]:
        """The top-level fields that make a body entity-keyed."""
        assert spec.features is not None
        return {"entities", f"{spec.features.entity}s"}

    def asked_in(self, body: bytes) -> bool:
        """Whether a body is entity-keyed (a cheap look before any parsing)."""
        return any(marker in body for marker in self._markers)

    def shape(self) -> dict[str, Any]:
        row = {self.key: "..."} | {name: "..." for name in self.online.request_fields}
        if self.online.request_fields:
            return {"entities": [row]}
        return {self.ids_field: ["..."], "or": {"entities": [row]}}

    def parse(
        self, payload: dict[str, Any], max_records: int
    ) -> tuple[list[tuple[int, dict[str, Any]]], dict[int, Any]]:
        """(index, row) of the valid entity rows and the field errors of the others."""
        extra = sorted(set(payload) - {"entities", self.ids_field})
        if extra or len(payload) != 1:
            name = extra[0] if extra else "body"
            raise field_error(
                400, name, f"send exactly one of entities, {self.ids_field}", self.shape()
            )
        field, items = next(iter(payload.items()))
        if not isinstance(items, list) or not items:
            raise field_error(400, field, "must be a non-empty list", self.shape())
        if len(items) > max_records:
            raise field_error(
                413, field, f"{len(items)} entities is over the limit", {"max_records": max_records}
            )
        if field == self.ids_field:
            if self.online.request_fields:
                raise field_error(
                    400, field, "this model needs request fields: send entities", self.shape()
                )
            items = [{self.key: item} for item in items]
        rows, invalid = [], {}
        for index, item in enumerate(items):
            try:
                rows.append((index, self.row_model.model_validate(item).model_dump()))
            except ValidationError as exc:
                invalid[index] = describe_errors(exc, (field, index))
        if not rows:
            detail = [e for errors in invalid.values() for e in errors]
            raise InputError(400, f"no valid entity among {len(items)}", detail)
        return rows, invalid

    def fetch(self, rows: list[dict[str, Any]]) -> "list[Fetched]":
        started = time.perf_counter()
        fetched = self.online.fetch(rows)
        labels = (self.spec.key, self.online.service_name)
        self.metrics.child(self.metrics.feature_latency, labels).observe(
            time.perf_counter() - started
        )
        return fetched

    def records(
        self,
        rows: list[tuple[int, dict[str, Any]]],
        fetched: "list[Fetched]",
        invalid: dict[int, Any],
        record_model: type[BaseModel],
        sent_as: str = "entities",
    ) -> tuple[list[tuple[int, BaseModel]], dict[int, dict[str, Any]]]:
        """Model records of the entities found (and what each answer adds); errors in `invalid`."""
        accepted, extras = [], {}
        for (index, row), found in zip(rows, fetched, strict=True):
            entity = row[self.key]
            outcome = "missing" if found.values is None else "stale" if found.stale else "found"
            self.metrics.child(
                self.metrics.feature_lookups, (self.spec.key, self.online.service_name, outcome)
            ).inc()
            if found.values is None:
                invalid[index] = [self._missing(index, entity, sent_as)]
                continue
            request = {name: row[name] for name in self.online.request_fields}
            try:
                accepted.append((index, record_model.model_validate(found.values | request)))
            except ValidationError as exc:  # stored features outside the model's schema
                invalid[index] = describe_errors(exc, ("features", entity))
                continue
            assert found.event_time is not None
            extras[index] = {
                self.key: entity,
                "feature_time": found.event_time.isoformat(),
                "stale": found.stale,
            }
        if not accepted:
            missing = all(e[0].get("status") == 404 for e in invalid.values())
            detail = [e for errors in invalid.values() for e in errors]
            count = len({i for i, _ in rows} | set(invalid))
            raise InputError(
                404 if missing else 400, f"none of the {count} entities could be served", detail
            )
        return accepted, extras

    def _missing(self, index: int, entity: str, sent_as: str) -> dict[str, Any]:
        """The 404 of one entity, at the place the client sent it."""
        place = f"{sent_as}.{index}" + (f".{self.key}" if sent_as == "entities" else "")
        return {
            "field": place,
            "status": 404,
            "error": f"no features for {self.key} {entity!r} in {self.online.service_name}",
        }
