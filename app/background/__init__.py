"""The jobs API's owner: one state machine per job, the spool on disk, and the runner that
feeds the pipeline at background priority."""
