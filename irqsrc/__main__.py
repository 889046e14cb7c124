"""`python -m irqsrc --run-dir DIR`: the device process (started by hostd)."""
import sys

from irqsrc.device import main

sys.exit(main())
