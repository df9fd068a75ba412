"""Constants shared by the OpenAI tests and their fixtures."""

from __future__ import annotations

ALICE, BOB = "alice-key", "bob-key"
#: Small limits, so the hostile-input tests stay cheap: 3 MB bodies, 1 MB images.
LIMITS = {"max_body_bytes": 3 * 1024 * 1024, "fetch_max_bytes": 1024 * 1024}
