"""Training the avatar networks (``stableface train``): data, augmented erosion, losses, trainer."""
