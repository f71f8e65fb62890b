"""`haven` with encryption taken out, for one purpose only: measuring what encryption costs.

    python -m bench.unencrypted_haven run

The same program with two changes made before it starts: Temporal payloads go through the
plain pydantic converter (no payload codec) and sealing a field returns it as it is. A data key
is still made and wrapped per request (microseconds), and stored. haven itself has no setting that
turns encryption off; this lives in bench/ so that no deployment can."""

from __future__ import annotations

import sys

from temporalio.contrib.pydantic import pydantic_data_converter

import haven.temporal
from haven.case_keys import Sealer
from haven.cli import main


def _unencrypted() -> None:
    haven.temporal.sealed_converter = lambda keys: pydantic_data_converter
    Sealer.seal = lambda self, field, value: value


if __name__ == "__main__":
    _unencrypted()
    sys.exit(main())
