"""Suite-wide set-up: passive OpenMP waiting before torch is imported anywhere (see quant/__init__.py)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
