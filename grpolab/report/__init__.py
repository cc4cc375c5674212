"""Reports of finished runs: report.md and its plots, from the run folder's files alone."""
