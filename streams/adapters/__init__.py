"""Vendor adapters: MTA records in, the project's input events out."""
