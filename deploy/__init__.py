"""Deployment manifests and the tools that render and check them."""
