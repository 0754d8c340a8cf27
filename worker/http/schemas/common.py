"""What every body is built from: the strict base (unknown fields refused) and the path
parameters' patterns."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, ConfigDict

INT32 = 2**31 - 1
SLUG = r"[a-z0-9][a-z0-9-]{0,62}"
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
TENANT_PATTERN = rf"^({SLUG}|{UUID})$"

TenantRef = Annotated[
    str, Path(pattern=TENANT_PATTERN, description="the tenant's slug or id", examples=["acme"])
]
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_:.\-]{1,200}$", examples=["ftjob-abc123"])]
OperationId = Annotated[str, Path(pattern=rf"^{UUID}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
