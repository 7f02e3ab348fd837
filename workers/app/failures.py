"""What the CLI prints when a verb fails: one line naming the setting at fault and the fix.

Exit codes: 2 for configuration (a wrong setting, argument or address), 1 for a check that
ran and failed (and for an unexpected error, which also says how to see its traceback).
"""

from __future__ import annotations

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from workers.app.preflight import settings_problems
from workers.errors import OperatorError
from workers.kms import KmsUnavailable
from workers.ledger import LedgerUnavailable
from workers.settings import Settings

CONFIG, CHECK = 2, 1


def explain(exc: BaseException) -> tuple[str, int]:
    """(message, exit code) for a failure; the message may hold one line per problem, never a secret."""
    if isinstance(exc, OperatorError):
        return str(exc), exc.exit_code
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return "\n".join(settings_problems(exc)), CONFIG
    if isinstance(exc, KafkaError):
        return f"Kafka: {exc}; check KEYLEDGER_KAFKA_BOOTSTRAP and that the broker is up", CONFIG
    if isinstance(exc, LedgerUnavailable):
        return f"{exc}; check KEYLEDGER_TB_ADDRESSES and that TigerBeetle is up", CONFIG
    if isinstance(exc, KmsUnavailable):
        return f"{exc}; check KEYLEDGER_KMS_ENDPOINT_URL, KEYLEDGER_AWS_REGION and the credentials", CONFIG
    if isinstance(exc, TimeoutError) and str(exc):
        return (f"{exc}: is KEYLEDGER_KAFKA_BOOTSTRAP the broker keyledger writes to? "
                "(`keyledger run` or `keyledger dev` creates the topics)"), CONFIG
    return f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", CHECK
