"""Real parts for tests, benchmarks and the demo: a private redis-server, free loopback ports."""
