"""``POST /v1/allocate``: solve a bit-allocation problem given in the request."""

from __future__ import annotations

from fastapi import APIRouter

from service.allocate.schemas import AllocateRequest, AllocateResult
from service.allocate.service import allocate
from service.auth.dependencies import TenantDep
from service.deps import SettingsDep
from service.schemas import error_responses

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["allocate"])


@router.post("/allocate", response_model=AllocateResult, responses=error_responses(503))
def allocate_bits(body: AllocateRequest, _tenant: TenantDep, settings: SettingsDep) -> AllocateResult:
    """Choose one (wbits, abits) candidate per layer minimising summed sensitivity within the budgets.

    Infeasible budgets give 422 ``infeasible_budget`` with ``details.min_achievable`` per budget.
    """
    return AllocateResult.model_validate(allocate(body, max_time_limit=settings.allocate_max_time_limit))
