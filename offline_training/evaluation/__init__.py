"""Evaluating videos: landmark tracks of rendered or recorded faces, and what they say about sync."""
