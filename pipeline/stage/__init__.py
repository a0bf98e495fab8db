"""The one loop every stage runs: poll → process → produce → flush → commit."""
