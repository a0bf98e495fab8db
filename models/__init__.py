"""meshwatch's detection maths: pure computation, no Kafka, HTTP or config loading."""
