"""Scaling: how many agents each capability needs (the autoscaling signal)."""
