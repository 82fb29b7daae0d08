"""An example `command` processor in the seed's CLI style.

    python -m processors.example_processor --date 2025-01-15 [--skip-downstream-trigger]

phasegate runs it for one date: the pipeline file declares

    [[phases.processors]]
    name = "example"
    kind = "command"
    command = ["python", "-m", "processors.example_processor", "--date", "{data_date}"]
    timeout_secs = 600

and substitutes `{data_date}` (the date is also in PHASEGATE_DATA_DATE). phasegate owns
everything around the run: the gate, the ledger row, the completion event. So the processor
only does its work for the date and exits 0 (success) or non-zero (failure; the end of its
stderr goes to the ledger's `errors`). It must be idempotent for a date (a redelivery or a
backfill runs it again): replace the date's rows, never append.

`--skip-downstream-trigger` is accepted for the seed's scripts and manual runs and ignored
here: under phasegate, whether the phase announces its completion is decided by the push's
`skip_downstream_trigger` attribute (or `phasegate run --skip-downstream-trigger`), never by
the processor, which publishes nothing.
"""

import argparse
import datetime
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", required=True, type=datetime.date.fromisoformat,
                        help="the data date, YYYY-MM-DD")
    parser.add_argument("--skip-downstream-trigger", action="store_true",
                        help="accepted for compatibility; phasegate decides publication")
    return parser.parse_args(argv)


def process(date: datetime.date) -> int:
    """The work for one date; returns the rows written. Replace with the real processor
    (e.g. a BigQuery DELETE of the date's rows, then an INSERT ... SELECT for the date)."""
    print(f"processing {date.isoformat()} (dataset {os.environ.get('PHASEGATE_BIGQUERY_DATASET', '?')})",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    env_date = os.environ.get("PHASEGATE_DATA_DATE")
    if env_date and env_date != args.date.isoformat():
        print(f"--date {args.date} disagrees with PHASEGATE_DATA_DATE {env_date}", file=sys.stderr)
        return 2
    try:
        rows = process(args.date)
    except Exception as exc:  # the message ends up in the ledger's errors
        print(f"failed for {args.date}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.date}: {rows} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
