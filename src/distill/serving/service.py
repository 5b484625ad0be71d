"""The HTTP service: FastAPI over an `ExportedModel`.

    POST /predict    one row (an object) or a list of rows → {"task", "outputs", "predictions"}
    POST /user_vector (an export with towers) rows of the user tower's features → {"dim", "vectors"};
                     ⟨user vector, item vector from `distill embed`⟩ is the student's logit
    GET  /health     {"status": "ok"}
    GET  /metadata   serving schema, task, classes, metrics of the run, versions, hashes

The request model is built from the serving schema, so the OpenAPI document lists every serving
feature with its type. A missing field, a wrong type, or a privileged or unknown field is a 422
whose `error` names the field (beside pydantic's `detail` list, as README documents it); unseen
category values go to the out-of-vocabulary bucket. Every error is `{"error": "<one line>"}`: 413
for a body over `max_body_bytes` (refused before it is read whole) or a list over `max_rows`, 415
for a body that is not JSON, 404/405 for a wrong route.
Scoring runs on a worker thread, one batch at a time, so /health answers during a large batch.

    >>> app = create_app(load_model("runs/demo/export-onnx"), max_rows=1000)  # doctest: +SKIP
    >>> run_service(app, "127.0.0.1", 8000, "the demo's student")   # prints where it listens
"""
# No `from __future__ import annotations`: FastAPI must see the locally built Row class itself.
import difflib
import socket
import sys
import threading
import time
from typing import Annotated, Any, Callable, Optional, Union

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from distill.data.kinds import KINDS
from distill.errors import DistillError
from distill.serving.exported import ExportedModel

# each kind's field type (null is allowed and means missing: a numeric's missing flag, a category's OOV bucket)
FIELD_TYPES: dict[str, Any] = {name: kind.request_field for name, kind in KINDS.items()}
MAX_BODY_BYTES = 8 * 1024 * 1024  # about 65,000 rows of the demo's seven features
MAX_ROWS = 10_000


def row_model(model: ExportedModel, names: Optional[list[str]] = None, title: str = "Row") -> type[BaseModel]:
    """A pydantic model with one required field per serving feature (or per one of `names`) and nothing else."""
    fields: dict[str, Any] = {}
    for f in model.manifest["serving"]:
        if names is None or f["name"] in names:
            fields[f["name"]] = (FIELD_TYPES[f["type"]], Field(..., description=KINDS[f["type"]].describe(f)))
    return create_model(title, __config__=ConfigDict(extra="forbid"), **fields)


class UserVectors(BaseModel):
    dim: int
    vectors: list[list[float]] = Field(description="one per row: the user tower's vector; its inner product with an "
                                                   "item's vector (distill embed) is the student's logit for the pair")


class Prediction(BaseModel):
    task: str
    outputs: list[str] = Field(description="prob (binary), prob_<class> (multiclass) or value (regression)")
    predictions: list[Union[float, dict[str, float]]] = Field(
        description="one per row: a probability or value, or for multiclass a map class → probability")


def explain(errors: list[dict[str, Any]], body: Any, model: ExportedModel, accepted: Optional[list[str]] = None,
            what: str = "serving feature", row: str = "Row") -> str:
    """Pydantic's errors as one line naming the field (and the row, for a list)."""
    accepted = model.names if accepted is None else accepted
    # The body is `Row | list[Row]`: keep the errors of the branch the body's shape chose.
    branch = "list" if isinstance(body, list) else row
    picked = [e for e in errors if len(e["loc"]) < 2 or str(e["loc"][1]).startswith(branch)] or errors
    e = picked[0]
    loc = list(e["loc"][2:])  # after ("body", branch): [row index,] field [, union member tags]
    if e["type"] == "json_invalid":
        return f"the body is not valid JSON: {e.get('ctx', {}).get('error', e['msg'])} at character {e['loc'][-1]}"
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
        close = difflib.get_close_matches(name, accepted, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" ({what}s: {', '.join(accepted)})"
        return f"{where}field '{name}' is not a {what}{hint}"
    if e["type"] == "missing":
        return f"{where}missing {what.split()[0]} field '{name}'"
    kind = model.kinds.get(name, "?")
    if len(names) > 1 and kind in KINDS:
        # a field that takes several shapes (a category: string or integer; a bag: a list or a string): pydantic's
        # message is one branch's ("Input should be a valid string" for 3.5); say what the field takes instead
        entry = next((f for f in model.manifest["serving"] if f["name"] == name), {})
        return f"{where}field '{name}' ({kind}): expected {KINDS[kind].describe(entry)}"
    return f"{where}field '{name}' ({kind}): {e['msg']}"


def create_app(model: ExportedModel, max_body_bytes: int = MAX_BODY_BYTES, max_rows: int = MAX_ROWS,
               access_log: Optional[Callable[[str], None]] = None) -> FastAPI:
    """The service; `access_log`, when given, gets one line per request (method, path, status, ms, rows)."""
    Row = row_model(model)
    Rows = Annotated[list[Row], Field(max_length=max_rows)]  # type: ignore[valid-type]  # length checked before any row
    app = FastAPI(title=f"distill: {model.manifest['model']} student", version=model.manifest["versions"]["distill"],
                  description=f"Serves the {model.manifest['role']} on {len(model.names)} serving features "
                              f"({model.manifest['task']['type']} '{model.manifest['task']['label']}'). "
                              f"At most {max_rows:,} rows and {max_body_bytes:,} bytes a request (413 beyond).")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if access_log is not None:
        app.add_middleware(AccessLog, say=access_log)  # added last, so outermost: it sees the 413s too

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        body = getattr(exc, "body", None)
        kind = request.headers.get("content-type", "")
        if not _is_json(kind):
            # FastAPI hands a non-JSON body to validation as bytes; say what is wrong instead
            got = f"got '{kind}'" if kind else "none was sent"
            return JSONResponse(status_code=415, content={"error": f"the body must be JSON with Content-Type: application/json ({got})"})
        if isinstance(body, list) and len(body) > max_rows:
            request.state.rows = len(body)
            return JSONResponse(status_code=413, content={
                "error": f"{len(body):,} rows in one request; at most {max_rows:,} (--max-rows): send them in smaller batches"})
        if request.url.path == "/user_vector" and "user" in model.towers:
            message = explain(errors, body, model, model.towers["user"]["inputs"], "user-tower feature", "UserRow")
        else:
            message = explain(errors, body, model)
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return JSONResponse(status_code=422, content={"error": message, "detail": detail})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404, 405, 413 from BodyLimit: the service's own shape, not FastAPI's {"detail": ...}
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)

    @app.exception_handler(DistillError)
    async def bad_input(request: Request, exc: DistillError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"error": str(exc)})

    # A plain `def`: FastAPI runs it on a worker thread, so the event loop keeps answering /health
    # while a large batch scores. The lock keeps one batch at a time, as on the loop before: the
    # runtime spreads a batch over its own threads, and batches side by side only contend for them.
    one_at_a_time = threading.Lock()

    @app.post("/predict", response_model=Prediction)
    def predict(request: Request, rows: Annotated[Union[Row, Rows], Body(examples=[_example(model)])]) -> Prediction:  # type: ignore[valid-type]
        batch = [rows] if isinstance(rows, BaseModel) else rows
        request.state.rows = len(batch)
        if not batch:
            raise DistillError("the list of rows is empty")
        with one_at_a_time:
            pred = model.predict([r.model_dump() for r in batch])
        if not np.isfinite(pred).all():
            bad = int(np.argwhere(~np.isfinite(pred))[0][0])
            raise DistillError(f"row {bad}: the prediction is not finite (a numeric value far outside the training range?)")
        if pred.ndim == 2:
            out: list[Any] = [dict(zip(model.manifest["classes"], map(float, p))) for p in pred]
        else:
            out = [float(p) for p in pred]
        return Prediction(task=model.manifest["task"]["type"], outputs=model.outputs, predictions=out)

    if "user" in model.towers:
        user_names = model.towers["user"]["inputs"]
        UserRow = row_model(model, user_names, "UserRow")
        UserRows = Annotated[list[UserRow], Field(max_length=max_rows)]  # type: ignore[valid-type]

        @app.post("/user_vector", response_model=UserVectors)
        def user_vector(request: Request, rows: Annotated[Union[UserRow, UserRows], Body(examples=[  # type: ignore[valid-type]
                {n: v for n, v in _example(model).items() if n in user_names}])]) -> UserVectors:
            batch = [rows] if isinstance(rows, BaseModel) else rows
            request.state.rows = len(batch)
            if not batch:
                raise DistillError("the list of rows is empty")
            with one_at_a_time:
                vectors = model.vectors("user", [r.model_dump() for r in batch])
            if not np.isfinite(vectors).all():
                bad = int(np.argwhere(~np.isfinite(vectors))[0][0])
                raise DistillError(f"row {bad}: the vector is not finite (a numeric value far outside the training range?)")
            return UserVectors(dim=int(vectors.shape[1]), vectors=vectors.tolist())

    # async: these run on the event loop itself, never queued behind worker threads held by /predict
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        keys = ("model", "role", "format", "task", "classes", "outputs", "serving", "privileged", "metrics",
                "versions", "sha256", "parameters", "exported_at", "leak_check") + (("towers",) if model.towers else ())
        return {k: model.manifest.get(k) for k in keys}

    return app


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, before it is read whole. A declared
    Content-Length over the limit is refused unread; a chunked body is counted as it arrives and
    refused at the first chunk past the limit."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.message = f"the body is over {max_bytes:,} bytes (--max-body-bytes): send fewer rows per request"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse(status_code=413, content={"error": self.message})(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # an HTTPException: FastAPI's body reader lets it through to the handler above
                    raise HTTPException(status_code=413, detail=self.message)
            return message
        await self.app(scope, counted, send)


class AccessLog:
    """ASGI middleware: one line per request, `POST /predict 200 3.1 ms 20 rows`."""

    def __init__(self, app: Any, say: Callable[[str], None]):
        self.app, self.say = app, say

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # 500 if the app fails before it answers
        state = scope.setdefault("state", {})  # the same dict as the endpoint's request.state

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            rows = state.get("rows")
            self.say(f"{scope['method']} {scope['path']} {status} {1000 * (time.perf_counter() - start):.1f} ms"
                     + (f" {rows} rows" if rows is not None else ""))


def run_service(app: FastAPI, host: str, port: int, what: str, say: Optional[Callable[[str], None]] = None) -> None:
    """Serve `app` until Ctrl-C or SIGTERM; one line once it listens (port 0: a free port, named there)."""
    import uvicorn
    say = say or to_stderr
    # Bound and listening here, before uvicorn starts: a port in use is one clear line, the ready
    # line names the real port, and a client that connects at once waits in the backlog.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise DistillError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    shown = f"[{host}]" if ":" in host else host
    say(f"serving {what} on http://{shown}:{sock.getsockname()[1]}, docs at /docs")
    try:
        # uvicorn's own lines are silenced (warnings stay): the line above and the access log say it
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    finally:
        sock.close()


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _example(model: ExportedModel) -> dict[str, Any]:
    """A plausible row for the OpenAPI page: the first vocabulary value of each feature."""
    feats = model.encoders.features
    return {n: KINDS[feats[n].kind].example(feats[n]) for n in model.names}
