"""Length units: the one table every reader, writer and report uses."""

from __future__ import annotations

# Metres per unit of the length units accepted in dataset manifests and input files.
UNITS_TO_METRES = {"m": 1.0, "cm": 0.01, "mm": 0.001}
# Reports may also be written in micrometres.
REPORT_UNITS_TO_METRES = {**UNITS_TO_METRES, "um": 1e-6}
