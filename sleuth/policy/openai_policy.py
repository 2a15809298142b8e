"""Any OpenAI-compatible chat-completions server as a ChatPolicy (OpenAI, vLLM, llama.cpp, ...).

Retries: the SDK retries 408/409/429/5xx, timeouts and dropped connections with exponential backoff
(honouring Retry-After); whatever still fails comes back as one ``PolicyError`` with the reason.
Native tool calls are returned as sent: arguments that are not a JSON object stay a string so the agent
can report the error to the model instead of guessing what it meant.
"""

from __future__ import annotations

import json
import os
from typing import Any

from sleuth.policy.base import ChatReply, SamplingParams, ToolCall


class PolicyError(RuntimeError):
    """A policy could not produce a reply (server error, bad credentials, unreachable endpoint, ...)."""


class OpenAIPolicy:
    """Messages in, text and native tool calls out; not trainable (the server keeps its token ids)."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, native_tools: bool = True, max_retries: int = 5,
                 max_tokens_field: str = "max_tokens") -> None:
        import openai

        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("SLEUTH_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if base_url is None:
                raise PolicyError("no API key for the OpenAI API: set OPENAI_API_KEY or SLEUTH_API_KEY, "
                                  "or pass base_url for a local server")
            api_key = "not-needed"   # local servers usually ignore the key, but the SDK requires one
        self.name = model
        self.model = model
        self.base_url = base_url
        self.native_tools = native_tools
        # Newer OpenAI models only accept max_completion_tokens; most other servers know max_tokens.
        self.max_tokens_field = max_tokens_field
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout,
                                     max_retries=max_retries)

    def _request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 params: SamplingParams) -> dict[str, Any]:
        req: dict[str, Any] = {"model": self.model, "messages": messages,
                               "temperature": params.temperature, self.max_tokens_field: params.max_new_tokens}
        if params.top_p < 1.0:
            req["top_p"] = params.top_p
        if params.stop:
            req["stop"] = list(params.stop)
        if tools and self.native_tools:
            req["tools"] = tools
            # OpenAI's default when tools are present, but some servers (llama-cpp-python) ignore the
            # tools unless it is said explicitly.
            req["tool_choice"] = "auto"
        return req

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
             params: SamplingParams | None = None) -> ChatReply:
        """One chat completion. With native_tools=False the tools are not sent (the prompt describes them)."""
        import openai

        params = params or SamplingParams()
        if not messages:
            raise ValueError("messages must be a non-empty list")
        try:
            resp = self._client.chat.completions.create(**self._request(messages, tools, params))
        except openai.APIStatusError as e:
            raise PolicyError(f"{self._where()} answered HTTP {e.status_code}: {_error_message(e)}") from e
        except openai.APITimeoutError as e:
            raise PolicyError(f"{self._where()} timed out (after retries)") from e
        except openai.APIConnectionError as e:
            raise PolicyError(f"cannot reach {self._where()}: {e}") from e
        except openai.OpenAIError as e:   # malformed responses and other SDK-level failures
            raise PolicyError(f"{self._where()}: {type(e).__name__}: {e}") from e
        if not getattr(resp, "choices", None):
            raise PolicyError(f"{self._where()} returned no choices")
        choice = resp.choices[0]
        msg = choice.message
        calls = [ToolCall(name=tc.function.name, arguments=_parse_arguments(tc.function.arguments),
                          id=tc.id or "")
                 for tc in (msg.tool_calls or []) if getattr(tc, "function", None) is not None]
        usage = resp.usage
        return ChatReply(text=msg.content or "", tool_calls=calls,
                         prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                         completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                         finish_reason=choice.finish_reason or "", cost=_cost(usage))

    def _where(self) -> str:
        return f"model {self.model!r} at {self.base_url or 'api.openai.com'}"

    def __repr__(self) -> str:
        return f"OpenAIPolicy(model={self.model!r}, base_url={self.base_url!r})"


def _cost(usage: Any) -> float | None:
    """The request's price when the server puts one in ``usage`` (OpenRouter and LiteLLM proxies: ``cost``)."""
    value = getattr(usage, "cost", None) if usage is not None else None
    if value is None and usage is not None:
        value = (getattr(usage, "model_extra", None) or {}).get("cost")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _parse_arguments(raw: str | None) -> dict[str, Any] | str:
    """A JSON object becomes a dict; anything else is returned verbatim (reported, never repaired)."""
    if raw is None or raw == "":
        return {}
    try:
        val = json.loads(raw)
    except (TypeError, ValueError):
        return raw
    return val if isinstance(val, dict) else raw


def _error_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return str(getattr(e, "message", e))
