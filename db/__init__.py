"""Database layer: models, engine/sessions, migrations and every query. No UI imports here."""
