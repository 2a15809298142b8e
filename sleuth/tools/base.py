"""Tool base class: declared JSON-schema arguments, validation, and errors returned as observations."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
          "array": list, "object": dict}


@dataclass
class ToolResult:
    """What a tool call gives back. ``text`` is the observation the model sees."""
    text: str
    ok: bool = True
    error: str | None = None       # short machine-readable kind: "bad_arguments", "timeout", "http_429", ...
    data: dict[str, Any] = field(default_factory=dict)  # structured extras (urls opened, results, ...)
    seconds: float = 0.0

    @classmethod
    def fail(cls, error: str, message: str, **data: Any) -> "ToolResult":
        return cls(text=f"Error: {message}", ok=False, error=error, data=data)


class Tool:
    """Subclass, set name/description/parameters (JSON schema 'properties' + 'required'), implement run()."""

    name: ClassVar[str] = "tool"
    description: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}, "required": []}

    def run(self, **kwargs: Any) -> ToolResult:
        raise NotImplementedError

    def validate(self, args: Any) -> str | None:
        """Return an error message for bad arguments, None if they fit the schema."""
        if not isinstance(args, dict):
            return f"{self.name} takes a JSON object of arguments, got {type(args).__name__}"
        props = self.parameters.get("properties", {})
        for req in self.parameters.get("required", []):
            if req not in args:
                return f"{self.name} is missing required argument {req!r}"
        for key, value in args.items():
            if key not in props:
                return f"{self.name} has no argument {key!r} (arguments: {', '.join(props) or 'none'})"
            spec = props[key]
            want = _TYPES.get(spec.get("type", ""), object)
            if isinstance(value, bool) and spec.get("type") in ("integer", "number"):
                return f"{self.name}: argument {key!r} must be {spec['type']}, got boolean"
            if not isinstance(value, want):
                return f"{self.name}: argument {key!r} must be {spec.get('type')}, got {type(value).__name__}"
            if spec.get("type") == "array" and "items" in spec:
                item_t = _TYPES.get(spec["items"].get("type", ""), object)
                if not all(isinstance(v, item_t) for v in value):
                    return f"{self.name}: every item of {key!r} must be {spec['items'].get('type')}"
            if "enum" in spec and value not in spec["enum"]:
                return f"{self.name}: argument {key!r} must be one of {spec['enum']}"
        return None

    def __call__(self, args: Any) -> ToolResult:
        """Validate then run; never raises — any failure comes back as an error observation."""
        t0 = time.perf_counter()
        err = self.validate(args)
        if err:
            res = ToolResult.fail("bad_arguments", err)
        else:
            try:
                res = self.run(**args)
            except Exception as e:  # a tool bug must not kill the agent loop
                res = ToolResult.fail("tool_exception", f"{self.name} failed: {type(e).__name__}: {e}")
        res.seconds = time.perf_counter() - t0
        return res

    def schema(self) -> dict[str, Any]:
        """OpenAI-style function declaration (also rendered into the local models' system prompt)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}
