"""The vendor formats by name: ``--from NAME`` on the command line, one module each."""

from __future__ import annotations

import importlib

from streams.adapters.base import Converter

FORMATS = ("sparkpost", "kumomta", "pmta", "postfix", "dsn")


def converter(name: str) -> Converter:
    """A new converter for ``name``; each adapter module names its class ``CONVERTER``."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; expected one of {', '.join(FORMATS)}")
    module = importlib.import_module(f"streams.adapters.{name}")
    return module.CONVERTER()
