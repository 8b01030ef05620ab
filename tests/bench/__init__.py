"""Benchmarks of optimist (not tests: pytest does not collect this package).

* ``python -m tests.bench``        optimist vs direct PostgreSQL vs PgBouncer, pgbench workloads
* ``python -m tests.bench.micro``  the hot path alone, no sockets (ns per operation, memory)
* ``python -m tests.bench.profile`` py-spy profile of the proxy under pgbench -S -M extended

See docs/performance.md.
"""
