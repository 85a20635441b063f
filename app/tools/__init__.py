"""Operators' tools that drive the real app from outside, each a module run with ``python -m``:

    python -m app.tools.fault_matrix   kill -9 the worker and the server, fill the disk; nothing lost (RELIABILITY.md)
    python -m app.tools.loadtest       N raters through the public API while the worker trains (RELIABILITY.md)
    python -m app.tools.walkthrough    the README walk-through unattended: two rated rounds, screenshots, an export
    python -m app.tools.raters_check   several raters and an admin at once: leases, closing a round (RELIABILITY.md)
    python -m app.tools.login_flood    a rater's rating latency alone and during 50 wrong sign-ins a second (RELIABILITY.md)

``harness`` is what they share (a lab: database, data dir, model; the worker and server processes);
``rater`` is one load-test client process. The app itself never imports this package.
"""
