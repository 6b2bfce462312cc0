"""Monitoring: alerts, SLOs, anomalies, regressions (pure) and the beat loops running them."""
