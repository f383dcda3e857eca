"""Turning a recorded video into an avatar: datasets, training, evaluation. Imports only ``engines``."""
