"""The API's own description: GET /openapi.json, the OpenAPI 3.1 document kept in the
package (rentbox/openapi.json). No authentication: it holds no secret."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import bottle

from rentbox.web.answers import JSON_TYPE

if TYPE_CHECKING:
    from rentbox.web import Context


def document() -> bytes:
    """The OpenAPI document as shipped, byte for byte."""
    return resources.files("rentbox").joinpath("openapi.json").read_bytes()


def routes(app: bottle.Bottle, ctx: "Context") -> None:
    body = document()  # read once, when the app is made

    @app.get("/openapi.json")
    def openapi() -> bytes:
        bottle.response.content_type = JSON_TYPE
        return body
