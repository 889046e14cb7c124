"""What counts as within reach of the kernel in compare's fidelity table: the analysis judges
by these bounds and the output states them."""
from __future__ import annotations

LOW, HIGH = 0.8, 1.25  # emulator / kernel
POINTS = 15.0  # successful polls within this many percentage points of the kernel's
CORES = 0.03  # beside a neighbour: the neighbour's CPU lost within this many cores of the kernel's
TOLERANCES = (f"✓: emu / kvm within {LOW}-{HIGH}x; successful polls within ±{POINTS:g} points; beside a neighbour, "
              f"its CPU lost within ±{CORES:g} core")
