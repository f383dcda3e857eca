"""Landmark trackers (MediaPipe Face Mesh, face-alignment, any 68-point ONNX model)."""
