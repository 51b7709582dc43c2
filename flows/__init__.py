"""Prefect flows: wiring, fan-out, retries, checkpoints. The CLI (`aurad`) lives here too."""

import os

# Offline, quiet defaults, set before Prefect, great-expectations or diffusers are imported. A user's own
# environment wins (setdefault).
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "GX_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)

