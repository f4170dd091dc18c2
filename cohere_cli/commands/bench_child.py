"""The measuring child of `cohere bench` (bench/run.py starts it, one per precision, so each gets a fresh process
and its own peak memory): `python -m cohere_cli.commands.bench_child JOB.json RESULT.json`. Its stderr is the
user's: progress lines go there."""

from __future__ import annotations

import sys
from pathlib import Path

from cohere_cli.bench.child import run_job
from cohere_cli.ui.console import info, show_warnings

if __name__ == "__main__":
    show_warnings()
    job_path, result_path = sys.argv[1:]
    sys.exit(run_job(Path(job_path), Path(result_path), info))
