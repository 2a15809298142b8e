"""sleuth's research tools over MCP (the ``mcp`` SDK): ``search``, ``browse`` and ``code``.

Served over stdio (``sleuth mcp``) or streamable HTTP (mounted at ``/mcp`` by ``sleuth serve``, behind the
service's token, size and rate guard). Each call goes through the same safety interceptor as the agent's own
actions (``sleuth.safety.check``): a refused call comes back as a tool error saying why, and the tool never
runs. ``code`` runs in a fresh sandbox per call (sleuth.tools.sandbox), so callers share no interpreter
state; ``browse`` opens corpus URLs (``corpus://<index>/<id>``, as search results give them). Web URLs are
refused: over MCP no URL has provenance (the agent opens only web URLs a search result or page gave it).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from sleuth import safety
from sleuth.protocol import Action


def _refuse(message: str) -> None:
    # the SDK's ToolError: the client gets the message as an is_error result (other exceptions are hidden)
    from mcp.server.mcpserver.exceptions import ToolError

    raise ToolError(message)


def _guarded(tool: str, args: dict[str, Any]) -> None:
    verdict = safety.check(Action(tool, args))
    if not verdict.allowed:
        _refuse(f"refused by sleuth's safety interceptor: {verdict.reason}")


def create_server(env: Any, name: str = "sleuth"):
    """An ``MCPServer`` exposing ``env``'s tools (an ``sleuth.agent.Environment``)."""
    from mcp.server.mcpserver import MCPServer

    from sleuth.tools.browse import BrowseTool
    from sleuth.tools.code import CodeTool
    from sleuth.tools.search import SearchTool

    server = MCPServer(name, log_level="WARNING",
                       instructions="Research tools: search a passage index, read pages by URL "
                                    "(corpus://... from search results), run offline Python.")
    search_tool = SearchTool(env.search_engine, k_per_query=env.search_k) if env.search_engine is not None else None

    def result_text(res) -> str:
        if not res.ok:
            _refuse(res.text)
        return res.text

    if search_tool is not None:
        @server.tool(description=search_tool.description)
        def search(queries: Annotated[list[str], Field(description="one or more search queries, run together",
                                                       min_length=1, max_length=8)]) -> str:
            _guarded("search", {"queries": queries})
            return result_text(search_tool({"queries": queries}))

    @server.tool(description=BrowseTool.description)
    def browse(url: Annotated[str, Field(description="the URL to open (e.g. corpus://wiki/w01234)")],
               page: Annotated[int | None, Field(description="page number, from 1", ge=1)] = None,
               find: Annotated[str | None, Field(description="text to find in the page")] = None) -> str:
        args = {"url": url, **({"page": page} if page else {}), **({"find": find} if find else {})}
        _guarded("browse", args)
        tool = BrowseTool(docstores=env.docstores, fetcher=env.fetcher, require_provenance=True)
        try:
            return result_text(tool(args))
        finally:
            close = getattr(tool, "close", None)
            if close:
                close()

    @server.tool(description=CodeTool.description)
    def code(code: Annotated[str, Field(description="Python source to execute")]) -> str:
        _guarded("code", {"code": code})
        with CodeTool(env.sandbox_config) as tool:
            res = tool({"code": code})
        return res.text if res.ok else result_text(res)

    return server
