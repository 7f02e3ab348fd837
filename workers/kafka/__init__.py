"""Kafka adapters: broker factory, topic admin, inbound records, publishing, the DLQ."""
