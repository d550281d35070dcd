"""Tooling around the services, not on a request's path: the local stack, its demo and
examples, the deployment files' generator, the benchmark and the load test."""
