"""Load tests: the locustfile (a user class per model) and `python -m services.tools.load`, the
headless run with SLO thresholds that `make load` starts."""
