"""The streaming pipeline and servers (issues #6 and #7). Imports only ``engines``."""
