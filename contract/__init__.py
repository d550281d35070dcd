"""The contract between training (pipelines/) and serving (services/): the catalog, paths,
settings, records-to-tensors and the task kinds. It imports neither side."""
