# The benchmarks are run by hand (python -m tests.bench ...), never collected as tests: they
# start servers and run for minutes. Nothing here is named test_*.py; this makes it explicit.
collect_ignore_glob = ["*.py"]
