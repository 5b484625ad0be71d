"""The HTTP service: FastAPI over an `ExportedModel`.

    POST /predict    one row (an object) or a list of rows → {"task", "outputs", "predictions"}
    GET  /health     {"status": "ok"}
    GET  /metadata   serving schema, task, classes, metrics of the run, versions, hashes

The request model is built from the serving schema, so the OpenAPI document lists every serving
feature with its type. A missing field, a wrong type, or a privileged or unknown field is a 422
whose `error` names the field; unseen category values go to the out-of-vocabulary bucket.

    >>> app = create_app(load_model("runs/demo/export-onnx"))           # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""
# No `from __future__ import annotations`: FastAPI must see the locally built Row class itself.
import difflib
from typing import Annotated, Any, Union

import numpy as np
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from distill.data.kinds import KINDS
from distill.errors import DistillError
from distill.serving.exported import ExportedModel

# each kind's field type (null is allowed and means missing: a numeric's missing flag, a category's OOV bucket)
FIELD_TYPES: dict[str, Any] = {name: kind.request_field for name, kind in KINDS.items()}


def row_model(model: ExportedModel) -> type[BaseModel]:
    """A pydantic model with one required field per serving feature and nothing else."""
    fields: dict[str, Any] = {}
    for f in model.manifest["serving"]:
        fields[f["name"]] = (FIELD_TYPES[f["type"]], Field(..., description=KINDS[f["type"]].describe(f)))
    return create_model("Row", __config__=ConfigDict(extra="forbid"), **fields)


class Prediction(BaseModel):
    task: str
    outputs: list[str] = Field(description="prob (binary), prob_<class> (multiclass) or value (regression)")
    predictions: list[Union[float, dict[str, float]]] = Field(
        description="one per row: a probability or value, or for multiclass a map class → probability")


def explain(errors: list[dict[str, Any]], body: Any, model: ExportedModel) -> str:
    """Pydantic's errors as one line naming the field (and the row, for a list)."""
    # The body is `Row | list[Row]`: keep the errors of the branch the body's shape chose.
    branch = "list" if isinstance(body, list) else "Row"
    picked = [e for e in errors if len(e["loc"]) < 2 or str(e["loc"][1]).startswith(branch)] or errors
    e = picked[0]
    loc = list(e["loc"][2:])  # after ("body", branch): [row index,] field [, union member tags]
    if e["type"] == "json_invalid":
        return f"the body is not valid JSON: {e['msg']}"
    if len(e["loc"]) < 2:
        return "the body is empty: send an object of serving features, or a list of them"
    where = f"row {loc[0]}: " if isinstance(body, list) and loc and isinstance(loc[0], int) else ""
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return f"{where}{e['msg']} (send an object of serving features, or a list of them)"
    name = names[0]
    if e["type"] == "extra_forbidden":
        if name in model.privileged:
            return f"{where}field '{name}' is privileged: it is not available at serving time and the student does not read it"
        close = difflib.get_close_matches(name, model.names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (serving features: {', '.join(model.names)})"
        return f"{where}field '{name}' is not a serving feature{hint}"
    if e["type"] == "missing":
        return f"{where}missing serving field '{name}'"
    return f"{where}field '{name}' ({model.kinds.get(name, '?')}): {e['msg']}"


def create_app(model: ExportedModel) -> FastAPI:
    Row = row_model(model)
    app = FastAPI(title=f"distill: {model.manifest['model']} student", version=model.manifest["versions"]["distill"],
                  description=f"Serves the {model.manifest['role']} on {len(model.names)} serving features "
                              f"({model.manifest['task']['type']} '{model.manifest['task']['label']}').")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        body = getattr(exc, "body", None)
        message = explain(errors, body, model)
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return JSONResponse(status_code=422, content={"error": message, "detail": detail})

    @app.exception_handler(DistillError)
    async def bad_input(request: Request, exc: DistillError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"error": str(exc)})

    # async: a row costs about a millisecond of CPU (encoders + graph), less than the hop to a
    # worker thread that a plain `def` endpoint would take, and nothing in it waits on I/O
    @app.post("/predict", response_model=Prediction)
    async def predict(rows: Annotated[Union[Row, list[Row]], Body(examples=[_example(model)])]) -> Prediction:  # type: ignore[valid-type]
        batch = [rows] if isinstance(rows, BaseModel) else rows
        if not batch:
            raise DistillError("the list of rows is empty")
        pred = model.predict([r.model_dump() for r in batch])
        if not np.isfinite(pred).all():
            bad = int(np.argwhere(~np.isfinite(pred))[0][0])
            raise DistillError(f"row {bad}: the prediction is not finite (a numeric value far outside the training range?)")
        if pred.ndim == 2:
            out: list[Any] = [dict(zip(model.manifest["classes"], map(float, p))) for p in pred]
        else:
            out = [float(p) for p in pred]
        return Prediction(task=model.manifest["task"]["type"], outputs=model.outputs, predictions=out)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        keys = ("model", "role", "format", "task", "classes", "outputs", "serving", "privileged", "metrics",
                "versions", "sha256", "parameters", "exported_at", "leak_check")
        return {k: model.manifest.get(k) for k in keys}

    return app


def _example(model: ExportedModel) -> dict[str, Any]:
    """A plausible row for the OpenAPI page: the first vocabulary value of each feature."""
    feats = model.encoders.features
    return {n: KINDS[feats[n].kind].example(feats[n]) for n in model.names}
