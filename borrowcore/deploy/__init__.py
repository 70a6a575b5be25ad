"""Deployment: predictions on image files, ONNX export and its runtime, what the detector costs."""
