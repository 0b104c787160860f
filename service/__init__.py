"""mpq service package: REST API, job store and workers."""

import os as _os

# Set before torch is imported by a worker (see quant/__init__.py for why).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
