"""The LSRCNN upscaling service (FastAPI + ONNX Runtime; no torch on this side)."""
