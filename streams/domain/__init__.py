"""Pure domain logic: no Kafka, Faust or Redis import may appear in this package."""
