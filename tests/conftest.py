"""Suite-wide set-up: passive OpenMP waiting before torch is imported anywhere (see quant/__init__.py), and a
private latency-table cache (tests never read or write the user's ``~/.local/share/mpq/latency``)."""

import os
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPQ_LATENCY_CACHE", tempfile.mkdtemp(prefix="mpq-test-latency-"))
