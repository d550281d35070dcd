"""Serving: one generic service, built from the catalog, for every registered model."""
