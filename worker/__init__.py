"""kantata-sync: push project changes from a SQL outbox into Kantata OX."""

from __future__ import annotations

__version__ = "0.1.0"
USER_AGENT = f"kantata-sync/{__version__} (+https://github.com/kantata-sync/kantata-sync)"
