"""The commands: `serve` and `demo`, `check`, `discover`; each turns settings into a run and an exit code."""
