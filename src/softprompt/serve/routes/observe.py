"""Inspection: /health, /tasks, /metrics (Prometheus text) and /docs (Swagger UI served
from this machine, so the page works without internet access)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from softprompt.serve.routes.state import State

DOCS_ASSETS = "/docs-assets"  # Swagger UI's files, served from the swagger-ui-bundle package

router = APIRouter()


def serve_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's script and style from this machine, not a CDN: the page
    works on a machine without internet access."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


@router.get("/tasks")
async def tasks(state: State) -> dict[str, Any]:
    engine = state.engine
    served = [s.describe() for _, s in sorted(engine.tasks.items())]
    return {"backbone": engine.backbone.name, "tasks": served, "refused": engine.refused}


@router.get("/health")
async def health(state: State) -> dict[str, Any]:
    engine = state.engine
    return {
        "status": "ok",
        "backbone": engine.backbone.name,
        "fingerprint": engine.backbone.fingerprint,
        "tasks": len(engine.tasks),
    }


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics_text(state: State) -> str:
    cache = state.engine.cache
    return state.metrics.render(
        {
            "softprompt_cache_hits": cache.hits,
            "softprompt_cache_misses": cache.misses,
            "softprompt_cache_evictions": cache.evictions,
            "softprompt_cache_invalidations": cache.invalidations,
            "softprompt_cache_bytes": cache.nbytes,
            "softprompt_cache_limit_bytes": cache.max_bytes,
            "softprompt_queue_waiting": state.batcher.waiting,
            "softprompt_tasks": len(state.engine.tasks),
        }
    )
