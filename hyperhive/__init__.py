"""hyperhive: a hive of long-lived Claude Code agents on one host."""

__version__ = "0.1.0"
