"""The alerter: incidents from findings, and notifications to chat and ticket systems."""
