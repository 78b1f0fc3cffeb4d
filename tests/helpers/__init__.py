"""What more than one test file uses, in one place (import the module you need):

- ``builders``: test data: sensors, readings, SenML payloads, reports, alarms, incidents.
- ``desk``: the service desk on the in-memory store, over a fake city and clock.
- ``waiting``: polling with a deadline.
- ``db``: fresh databases and settings on them, queries, projections caught up.
- ``web``: tokens and Authorization headers, the API behind a ``TestClient``.
- ``brokers``: MQTT publishers and bridges, reading Kafka topics.
- ``workers``: workers in threads and in subprocesses, HTTP servers until ready.
- ``city``: the seeded cities several test files build (the service desk, the cases API).
"""
