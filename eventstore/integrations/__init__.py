"""Adapters that let other libraries run on this event store through its public API."""
