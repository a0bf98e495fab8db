"""meshwatch's running system: I/O, stages and the command line."""

__version__ = "0.1.0"
