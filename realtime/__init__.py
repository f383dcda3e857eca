"""The streaming pipeline and servers. Imports only ``engines``."""
