"""`keyledger dev`: the embedded stack and every worker in one process."""

from __future__ import annotations

from workers.app.runtime import bootstrap_for, running_workers, until_signalled
from workers.groups import ALL_GROUPS
from workers.settings import Profile, Settings


async def dev(settings: Settings) -> None:
    if settings.profile is Profile.PRODUCTION:
        raise SystemExit("keyledger dev runs the development stack; unset KEYLEDGER_PROFILE=production")
    async with bootstrap_for(settings) as bootstrap, running_workers(settings, bootstrap, ALL_GROUPS) as context:
        print(f"Kafka bootstrap : {bootstrap}", flush=True)
        print(f"KMS             : {settings.kms_provider.value}"
              + (f" at {settings.kms_endpoint_url}" if settings.kms_endpoint_url else " (in-process)"), flush=True)
        print(f"ledger          : {settings.ledger.value}"
              + (f" at {settings.tb_addresses}" if settings.tb_addresses else " (in-process)"), flush=True)
        print(f"groups          : {', '.join(ALL_GROUPS)}", flush=True)
        print(f"metrics, health : {context.http_url}/metrics, /healthz, /readyz" if context.http_url
              else "metrics, health : off (KEYLEDGER_HTTP_PORT=0, or the port was taken)", flush=True)
        print("produce to tenants.created (e.g. kcat -P -b BOOTSTRAP -t tenants.created -K:); Ctrl-C stops", flush=True)
        await until_signalled()
