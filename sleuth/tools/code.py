"""The code tool: run Python in a sandboxed worker that lives for one trajectory (see sleuth.tools.sandbox)."""

from __future__ import annotations

from typing import Any, ClassVar

from sleuth.tools.sandbox import Sandbox, SandboxConfig
from sleuth.tools.base import Tool, ToolResult


class CodeTool(Tool):
    """One instance per trajectory: variables persist across calls until ``close()`` or a restart."""

    name: ClassVar[str] = "code"
    description: ClassVar[str] = (
        "Run Python 3 code and see what it prints. Variables, functions and imports persist between calls; "
        "the value of a final expression is shown, as in a REPL. Standard library only (plus numpy if "
        "installed); no network; only the current (scratch) directory can be written. Each call has a "
        "time and memory limit: if it is exceeded the interpreter restarts and earlier state is lost. Use "
        "it for arithmetic, dates, unit conversions and checking numbers from sources."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python source to execute"}},
        "required": ["code"],
    }

    def __init__(self, sandbox_config: SandboxConfig | None = None):
        self.sandbox_config = sandbox_config or SandboxConfig()
        self._sandbox: Sandbox | None = None   # started on first use: unused, it costs nothing

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = Sandbox(self.sandbox_config)
        return self._sandbox

    def run(self, code: str) -> ToolResult:   # type: ignore[override]
        if not code.strip():
            return ToolResult.fail("bad_arguments", "code is empty; pass the Python source to run")
        try:
            sandbox = self.sandbox
        except (OSError, ValueError) as e:
            return ToolResult.fail("unavailable", f"the code sandbox could not be set up: {e}")
        r = sandbox.run(code)
        return ToolResult(text=r.text, ok=r.ok, error=r.error,
                          data={"output": r.output, "message": r.message, "restarted": r.restarted,
                                "truncated": r.truncated})

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def __enter__(self) -> "CodeTool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
