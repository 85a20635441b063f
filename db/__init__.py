"""Persistence: SQLAlchemy models, engine and sessions, small repository functions, migrations.

Never imports ``seiko_core`` or ``gradio``. See ``db.repo`` for the functions the app calls.
"""
