"""Load tests: the locustfile (a user class per model) and `python -m services.load`, the
headless run with SLO thresholds that `make load` starts."""
