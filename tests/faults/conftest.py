"""The integration fixtures (a real broker, worker processes, moto) for the fault suite."""

from tests.integration.conftest import aws_env, topics_ready, worker_process  # noqa: F401  (pytest fixtures)
