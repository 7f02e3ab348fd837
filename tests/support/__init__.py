"""Helpers shared by the tests; the fixtures that start processes are in tests/conftest.py.

- harness: handler tests on FastStream's in-memory broker (`handler_harness(groups, tenants=...)`) and
  the message builders (`tenant_created`, `span_job`, `tick`, `inbound`).
- kafka: reading a real broker (`records_for`, `read`: through the broker's tap, from where the last read
  stopped), committed offsets and the waits a negative assertion needs (`wait_processed`, `wait_drained`).
- processes: `keyledger run` processes (`WorkerProcesses`, behind the `worker_process` and
  `shared_worker` fixtures), in-process workers (`in_process_workers`) and a worker's /metrics (`scrape`).
- faults: real adapters with switchable outages. secrets: finding secrets in bytes. strategies: hypothesis.
"""
