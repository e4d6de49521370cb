"""Tools for testing mlpi and its plugins: tiny ONNX models built on the spot."""
