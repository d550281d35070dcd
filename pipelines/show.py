"""Print what the registry holds for every catalog model: versions, aliases, champion metrics."""

import sys

from contract.catalog import load_catalog
from contract.settings import get_settings
from pipelines.log import configure
from pipelines.registry import summary


def table() -> tuple[str, bool]:
    """The report, and whether every model has a champion meeting its floors."""
    catalog = load_catalog()
    lines = [f"MLflow registry: {get_settings().mlflow_tracking_uri}", ""]
    complete = True
    for row in summary(list(catalog)):
        spec, metrics = catalog[str(row["model"])], dict(row["metrics"])  # type: ignore[call-overload]
        aliases = ", ".join(f"@{a} -> v{v}" for a, v in sorted(dict(row["aliases"]).items()))  # type: ignore[call-overload]
        lines.append(f"{spec.key:<18} versions: {row['versions']:<3} {aliases or 'no aliases'}")
        for name, bound in spec.floors.items():
            value = metrics.get(name)
            verdict = (
                "no champion" if value is None else ("ok" if bound.holds(value) else "BELOW FLOOR")
            )
            complete &= verdict == "ok"
            shown = "-" if value is None else f"{value:.4f}"
            lines.append(f"{'':<18}   {name:<10} {shown:>8}   floor {bound!s:<10} {verdict}")
    return "\n".join(lines), complete


def main() -> None:
    configure()
    report, complete = table()
    print(report)
    sys.exit(0 if complete else 1)


if __name__ == "__main__":
    main()
