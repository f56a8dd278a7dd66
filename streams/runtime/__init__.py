"""Kafka and Faust: the worker application, its checkpoint, codec, producers and the
settings every process reads."""
