"""Talking to engines: one pooled HTTP client, attempts classified for failover."""
