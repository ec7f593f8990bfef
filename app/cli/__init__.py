"""`lsrcnn-upscale`: upscale files and folders from the command line, through a running
service's jobs API, or in-process with `--local`."""
