"""Bounce qualification: SMTP replies and DSN/ARF reports → class, type, reason, rule."""
