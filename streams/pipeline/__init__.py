"""Steps over key-value state (feedback, KPI, control), the records they emit and the
topology that wires them; no Kafka, Faust or Redis here. The workers run these steps over
Faust tables, ``replay`` and the simulator over dicts."""
