"""LSRCNN: an LSTM super-resolution network, its training, export and evaluation (PyTorch side)."""
