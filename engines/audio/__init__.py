"""Audio features that drive the mouth."""
