"""`pii.results` as written by the group's fast path is byte for byte what the model writes.

`groups.pii._encode` writes a result without errors with orjson, not through `PiiResult`; for any answer
the service can give (a validated request, a key id from the key table or none, any field paths and
values the service produces, a sealed result key or none) it must write exactly `PiiResult(...).to_json()`,
and a result with errors goes through the model itself.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import ErrorCode
from schemas.messages import PiiRequest, PiiResult, SealedResultKey
from tests.support.strategies import models
from workers.errors import error_info
from workers.groups.pii import _encode
from workers.services.pii import PiiAnswer
from workers.source import Source

CHECK = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SOURCE = Source("pii.requests", 0, 7)
key_ids = st.none() | st.from_regex(r"[0-9a-f]{32}", fullmatch=True)
# any text the service may answer with: a decrypt's plaintext is any Unicode text, control characters,
# quotes, backslashes and characters beyond the BMP included
texts = st.text(max_size=40) | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40)
answered_fields = st.dictionaries(st.text(min_size=1, max_size=20), texts, max_size=4)


def model_value(answer: PiiAnswer, fields: dict[str, str], result_key: SealedResultKey | None) -> bytes:
    request = answer.request
    return PiiResult(job_id=request.job_id, tenant_id=request.tenant_id, record_id=request.record_id,
                     operation=request.operation, fields=fields, key_id=answer.key_id, errors=answer.errors,
                     error=answer.error, result_key=result_key).to_json()


@CHECK
@given(models(PiiRequest), answered_fields, key_ids, st.none() | models(SealedResultKey))
def test_a_result_without_errors_is_written_as_the_model_writes_it(request, fields, key_id, result_key):
    answer = PiiAnswer(SOURCE, request, fields, key_id)
    assert _encode(answer, fields, result_key) == model_value(answer, fields, result_key)


@CHECK
@given(models(PiiRequest), answered_fields, key_ids, st.booleans())
def test_a_result_with_errors_is_written_by_the_model(request, fields, key_id, whole):
    problem = error_info(ErrorCode.KEY_NOT_FOUND, "no key")
    answer = (PiiAnswer(SOURCE, request, key_id=key_id, error=problem) if whole
              else PiiAnswer(SOURCE, request, fields, key_id, errors={"a.b": problem}))
    assert _encode(answer, answer.fields, None) == model_value(answer, answer.fields, None)


def test_a_lone_surrogate_goes_to_the_model_as_before():
    request = PiiRequest(job_id="j", tenant_id="tenant-001", record_id="r", operation="decrypt", fields={"a": "x"})
    answer = PiiAnswer(SOURCE, request, {"a": "\ud800"}, "ab" * 16)
    try:
        expected: bytes | type[Exception] = model_value(answer, answer.fields, None)
    except Exception as exc:  # whatever the model does with it, the fast path does the same
        expected = type(exc)
    try:
        got: bytes | type[Exception] = _encode(answer, answer.fields, None)
    except Exception as exc:
        got = type(exc)
    assert got == expected
