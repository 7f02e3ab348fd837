"""The secret scanner the no-secrets tests rely on finds a secret in each usual encoding and position."""

import base64
import os

import pytest

from tests.support.secrets import found_in


@pytest.mark.parametrize("shift", range(3))
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode, lambda b: b.hex().encode(),
                                    lambda b: b, lambda b: repr(b).encode()])
def test_a_secret_is_found_wherever_it_starts_and_however_it_is_encoded(shift, encode):
    secret = os.urandom(32)
    blob = b'{"x": "' + encode(os.urandom(shift) + secret + os.urandom(5)) + b'"}'
    assert found_in(secret, [b"unrelated", blob])


def test_other_bytes_are_not_reported():
    assert found_in(os.urandom(32), [os.urandom(4096), base64.b64encode(os.urandom(4096))]) == []
