"""The model runtime: the engine and its device, the model registry, one scheduler per
model, tile plans and metrics. Knows nothing about HTTP or image files."""
