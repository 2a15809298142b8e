"""Tools from other MCP servers, for the agent: each remote tool becomes a ``Tool`` like sleuth's own.

``MCPToolbox.connect(["http://host/mcp", "python my_server.py"])`` connects to each server (a URL means
streamable HTTP, anything else is a command line started over stdio), lists its tools and keeps the
connections open on a background event loop; ``toolbox.tools()`` gives one ``MCPTool`` per remote tool. A
name that clashes with another tool (sleuth's search/browse/code/finish included) is prefixed with the
server's name. The agent shows these tools to the model as it shows its own (native tool schemas for an
OpenAI-compatible server; ``<name>{json arguments}</name>`` tags, listed in the system prompt, for a local
model) and every call passes the safety interceptor first (``sleuth.safety.check`` with the extra tools'
names), which blocks tools whose names act on the outside world and arguments that do.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import threading
from typing import Any

from sleuth.tools.base import Tool, ToolResult

RESERVED = {"search", "browse", "code", "finish", "answer", "think", "cite", "observation"}


def _tag_name(name: str) -> str:
    """A name the tag protocol can carry: letters, digits, '_' and '-', starting with a letter or '_'."""
    clean = re.sub(r"[^\w-]", "_", name)
    return clean if re.match(r"[a-zA-Z_]", clean) else "_" + clean


def result_text(result: Any) -> str:
    """An MCP CallToolResult's content as observation text (text blocks; other blocks are named)."""
    parts = []
    for block in getattr(result, "content", None) or []:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(block, 'type', 'content')} content]")
    if not parts and getattr(result, "structured_content", None) is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


class MCPTool(Tool):
    """One tool of a connected MCP server. Arguments are checked by the server against its own schema."""

    def __init__(self, toolbox: "MCPToolbox", server: int, remote_name: str, name: str, description: str,
                 parameters: dict[str, Any], timeout_s: float):
        self.toolbox, self.server, self.remote_name = toolbox, server, remote_name
        self.name = name                      # type: ignore[misc]
        self.description = description       # type: ignore[misc]
        self.parameters = parameters or {"type": "object", "properties": {}}   # type: ignore[misc]
        self.timeout_s = timeout_s

    def validate(self, args: Any) -> str | None:
        if not isinstance(args, dict):
            return f"{self.name} takes a JSON object of arguments, got {type(args).__name__}"
        missing = [k for k in self.parameters.get("required", []) if k not in args]
        return f"{self.name} is missing required argument {missing[0]!r}" if missing else None

    def from_text(self, content: str) -> dict[str, Any] | str:
        """A tag's text as arguments: a JSON object, or the whole text for a tool with one string argument.
        A string back is the error to show."""
        content = content.strip()
        if content.startswith("{"):
            try:
                args = json.loads(content)
            except ValueError as e:
                return f"the arguments of <{self.name}> are not valid JSON ({e})"
            return args if isinstance(args, dict) else f"<{self.name}> takes a JSON object"
        props = self.parameters.get("properties", {})
        strings = [k for k, v in props.items() if isinstance(v, dict) and v.get("type") == "string"]
        if len(props) == 1 and strings:
            return {strings[0]: content}
        return f"write the arguments of <{self.name}> as a JSON object ({', '.join(props) or 'no arguments'})"

    def __call__(self, args: Any) -> ToolResult:
        props = self.parameters.get("properties", {})
        if isinstance(args, dict) and set(args) == {"content"} and "content" not in props:   # from a tag
            converted = self.from_text(str(args["content"]))
            if isinstance(converted, str):
                return ToolResult.fail("bad_arguments", converted)
            args = converted
        return super().__call__(args)

    def run(self, **args: Any) -> ToolResult:   # type: ignore[override]
        try:
            result = self.toolbox.call(self.server, self.remote_name, args, self.timeout_s)
        except TimeoutError:
            return ToolResult.fail("timeout", f"{self.name} did not answer within {self.timeout_s:.0f} s")
        except Exception as e:   # the server went away, refused the call, ...
            return ToolResult.fail("mcp_error", f"{self.name} failed: {type(e).__name__}: {e}")
        text = result_text(result)
        if getattr(result, "is_error", False):
            return ToolResult.fail("tool_error", text or f"{self.name} reported an error")
        return ToolResult(text=text or "(no output)", data={"server": self.toolbox.names[self.server]})


class MCPToolbox:
    """Open connections to MCP servers on a background event loop, and their tools."""

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self.names: list[str] = []
        self._clients: list[Any] = []
        self._tools: list[MCPTool] = []
        self._stops: list[asyncio.Event] = []
        self._holders: list[Any] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sleuth-mcp-client", daemon=True)
        self._thread.start()

    @classmethod
    def connect(cls, servers: list[str], timeout_s: float = 60.0) -> "MCPToolbox":
        box = cls(timeout_s)
        try:
            for spec in servers:
                box.add(spec)
        except BaseException:
            box.close()
            raise
        return box

    def add(self, spec: str) -> list[MCPTool]:
        """Connect to one server (URL or command line) and add its tools."""
        from mcp import Client, StdioServerParameters

        if re.match(r"https?://", spec):
            target: Any = spec
        else:
            argv = shlex.split(spec)
            if not argv:
                raise ValueError("an MCP server needs a URL or a command line")
            target = StdioServerParameters(command=argv[0], args=argv[1:])
        client = Client(target, read_timeout_seconds=self.timeout_s)
        ready: asyncio.Future = self._loop.create_future()
        stop_holder: list[asyncio.Event] = []

        async def hold() -> None:
            # enter and leave the client in one task (anyio's rule), for as long as the toolbox lives
            stop = asyncio.Event()
            stop_holder.append(stop)
            try:
                async with client:
                    listed = await client.list_tools()
                    ready.set_result((client, listed))
                    await stop.wait()
            except BaseException as e:
                if not ready.done():
                    ready.set_exception(e)
                raise

        holder = asyncio.run_coroutine_threadsafe(hold(), self._loop)
        try:
            client, listed = asyncio.run_coroutine_threadsafe(_wait(ready), self._loop).result(self.timeout_s)
        except Exception as e:
            holder.cancel()
            raise OSError(f"could not connect to MCP server {spec!r}: {type(e).__name__}: {e}") from e
        server = len(self._clients)
        info = getattr(client, "server_info", None)
        self.names.append(_tag_name(getattr(info, "name", "") or f"mcp{server}"))
        self._clients.append(client)
        self._stops.append(stop_holder[0])
        self._holders.append(holder)
        taken = {t.name for t in self._tools} | RESERVED
        added = []
        for t in listed.tools:
            name = _tag_name(t.name)
            if name in taken:
                name = f"{self.names[server]}_{name}"
            taken.add(name)
            schema = getattr(t, "input_schema", None) or getattr(t, "inputSchema", None) or {}
            tool = MCPTool(self, server, t.name, name, t.description or "", dict(schema), self.timeout_s)
            self._tools.append(tool)
            added.append(tool)
        return added

    def tools(self) -> list[MCPTool]:
        return list(self._tools)

    def call(self, server: int, name: str, args: dict[str, Any], timeout_s: float) -> Any:
        client = self._clients[server]
        fut = asyncio.run_coroutine_threadsafe(client.call_tool(name, args), self._loop)
        try:
            return fut.result(timeout_s)
        except TimeoutError:
            fut.cancel()
            raise

    def close(self) -> None:
        for stop in self._stops:
            self._loop.call_soon_threadsafe(stop.set)
        for h in self._holders:
            try:
                h.result(10)
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _wait(fut: asyncio.Future) -> Any:
    return await fut
