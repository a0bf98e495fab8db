"""`meshwatch demo`: the whole pipeline on one machine."""
