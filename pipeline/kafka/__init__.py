"""Kafka plumbing: clients built from config, topic admin, the embedded broker."""
