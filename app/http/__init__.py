"""The HTTP edge: routes, their shared dependencies, errors, middleware, the web page and
the uvicorn server. Speaks to the pipeline and the jobs; never to ONNX Runtime."""
