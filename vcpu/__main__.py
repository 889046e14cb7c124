"""`python -m vcpu --run-dir DIR --index I`: one emulated vCPU process (started by hostd)."""
import sys

from vcpu.process import main

sys.exit(main())
