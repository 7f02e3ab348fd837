"""The integration fixtures (real broker, moto KMS, `keyledger run` subprocesses) for the process-level tests here."""

from tests.integration.conftest import aws_env, topics_ready, worker_process  # noqa: F401
