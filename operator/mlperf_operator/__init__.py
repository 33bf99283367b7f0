"""Kubernetes operator for MLPerf Inference runs."""
