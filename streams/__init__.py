"""Feedback and control plane of an Enhanced-MTA style email sending platform."""

__version__ = "0.1.0"
