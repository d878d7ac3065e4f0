"""`/api/models/{model}/versions/{version}/card` and `/api/releases/card`: a release's model card.

    GET /api/models/{model}/versions/{version}/card      viewer   the full card
    GET /api/releases/card?target=digits/3/model.int8.onnx   viewer   the same, by target

The full card is the signed part (what the release's TUF targets metadata carries), `signed`
(false for a release published before model cards, whose card is rebuilt from the registry)
and the deployment record; server.governance.model_card builds it. An unknown release is 404
(NotFoundError, mapped in server.api.errors).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from server.api.deps import SessionFactoryDep, ViewerDep
from server.governance.model_card import full_card, resolve_release

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["governance"])

MODEL_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ModelName = Annotated[str, Path(pattern=MODEL_NAME, description="registry model name")]
Version = Annotated[int, Path(ge=1, le=2**31 - 1, description="model version")]


@router.get("/models/{model}/versions/{version}/card")
def model_card(
    model: ModelName, version: Version, _user: ViewerDep, session_factory: SessionFactoryDep
) -> dict[str, Any]:
    """The release's model card: signed part, `signed`, and `deployment`."""
    with session_factory() as session:
        name, number = resolve_release(session, model, version)
        return full_card(session, name, number)


@router.get("/releases/card")
def release_card(
    target: Annotated[str, Query(min_length=1, max_length=300, description="TUF target path")],
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
) -> dict[str, Any]:
    """The model card of the release whose TUF target path is `target`."""
    with session_factory() as session:
        name, number = resolve_release(session, target)
        return full_card(session, name, number)
