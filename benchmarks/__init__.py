"""Latency and throughput benchmark scripts."""
