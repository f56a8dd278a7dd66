"""The Avro schemas of the pipeline's topics, shipped as package data (``streams.schemas``).

``<stem>.avsc`` is the current version; ``history/<stem>/v<N>.avsc`` every released one.
"""
