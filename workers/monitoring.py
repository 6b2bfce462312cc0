"""Monitoring tasks run by beat (SPEC section 9); filled in by the monitoring issue."""
