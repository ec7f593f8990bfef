"""The path an image takes (the pipeline) and its parts: decoding with limits, the JPEG
quality estimate, and the canvas that tiles run into and that encodes."""
