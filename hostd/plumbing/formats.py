"""The version of hostd's saved result documents (compare's and the tables' results.json, tune.json,
replay.json): `hostd show` reads only the version it was written for, and says so of any other."""
from __future__ import annotations

RESULTS_FORMAT_VERSION = 1
