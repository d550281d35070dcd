"""Serving benchmark (`make bench`): floor vs lean service vs BentoML vs `mlflow models serve`."""
