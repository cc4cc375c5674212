"""Benchmarks behind `grpolab bench <name>`: each is a module here with `run(overrides) -> int`
(listed in `grpolab.commands.bench.BENCHMARKS`) that prints one JSON line per setting."""
