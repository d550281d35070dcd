"""The integration tests use the session-wide `project` workspace of tests/conftest.py."""
