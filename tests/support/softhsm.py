"""A fresh SoftHSM2 token (Debian's softhsm2) for the pkcs11 KMS provider's tests."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                   "/usr/local/lib/softhsm/libsofthsm2.so")


@dataclass(frozen=True)
class SoftHsm:
    module: str
    token_label: str
    pin_file: Path
    conf: Path

    @property
    def pin(self) -> str:
        return self.pin_file.read_text().strip()

    def env(self) -> dict[str, str]:
        """What a `keyledger` subprocess needs to reach this token."""
        return {"SOFTHSM2_CONF": str(self.conf), "KEYLEDGER_PKCS11_MODULE": self.module,
                "KEYLEDGER_PKCS11_TOKEN_LABEL": self.token_label, "KEYLEDGER_PKCS11_PIN_FILE": str(self.pin_file)}


def softhsm_missing() -> str | None:
    """Why no token can be made here, or None."""
    if shutil.which("softhsm2-util") is None or not any(os.path.exists(m) for m in SOFTHSM_MODULES):
        return "no SoftHSM2: `apt-get install -y softhsm2` (.ci/run installs it)"
    return None


def init_token(base: Path) -> SoftHsm:
    """A token in its own token directory under `base`, with a random label, user PIN (in a file) and SO PIN."""
    module = next(m for m in SOFTHSM_MODULES if os.path.exists(m))
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_hex(8)
    pin_file = base / "pin"
    pin_file.write_text(pin + "\n")
    label = f"keyledger-{secrets.token_hex(4)}"
    subprocess.run([str(shutil.which("softhsm2-util")), "--init-token", "--free", "--label", label,
                    "--so-pin", secrets.token_hex(8), "--pin", pin],
                   env={**os.environ, "SOFTHSM2_CONF": str(conf)}, check=True, capture_output=True)
    return SoftHsm(module, label, pin_file, conf)
