"""What the lock-wait tests share: running a piece of work behind a lock that another session holds."""

from __future__ import annotations

import threading
from collections.abc import Callable


def ended_behind(held, work: Callable[[], object]) -> bool:
    """Run ``work`` in a thread while ``held`` (a session holding the lock it needs) stays open, then roll ``held``
    back and close it, whatever happened. True when ``work`` ended within 60 s, generous: a wait with no bound never
    ends."""
    thread = threading.Thread(target=work, daemon=True)
    try:
        thread.start()
        thread.join(60)
        return not thread.is_alive()
    finally:
        held.rollback()
        held.close()
        thread.join(60)
