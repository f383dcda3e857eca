"""Decoding and encoding audio and video files with PyAV."""
