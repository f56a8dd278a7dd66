"""Closed-loop simulator: a Campaign, an MTA and mailbox providers around the pipeline.

The core (``campaign``, ``providers``, ``mta``, ``runner``, ``control``) imports no Kafka
code: it talks to the pipeline through a ``ControlPlane`` (``control.InProcessControlPlane``
runs the pipeline steps in memory; ``kafka_control.KafkaControlPlane`` goes through the real
broker and worker). Time is virtual and driven by event time; the same seed and start time
give the same events against the in-process pipeline.
"""
