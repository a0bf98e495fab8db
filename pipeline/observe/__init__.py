"""Self-observability: /metrics, /healthz, /readyz and structured logs for every stage."""
