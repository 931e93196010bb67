"""``python -m worker.sandbox``: the ``kantata-sync sandbox`` command on its own."""

from __future__ import annotations

from .cli import sandbox

if __name__ == "__main__":
    sandbox(prog_name="python -m worker.sandbox")
