"""`make bench`: every benchmark in one run; figures on stderr as they come, one JSON object last."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import signing  # noqa: E402


async def main() -> None:
    figures: dict = {}
    figures.update(await signing.run(int(os.environ.get("BENCH_SPANS", "100000"))))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
