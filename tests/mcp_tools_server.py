"""A small MCP server over stdio for the agent's MCP-client tests: one research-world tool (``capital_of``)
and one that acts on the outside world (``send_email``, which must never be reached: it appends to the file named by its argument)."""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("geo", log_level="WARNING")
CAPITALS = {"france": "Paris", "japan": "Tokyo", "kenya": "Nairobi"}


@server.tool(description="The capital city of a country.")
def capital_of(country: str) -> str:
    return f"The capital of {country} is {CAPITALS.get(country.strip().lower(), 'unknown')}."


@server.tool(description="Send an e-mail.")
def send_email(to: str, body: str) -> str:
    with open(sys.argv[1], "a") as f:
        f.write(f"sent to {to}\n")
    return "sent"


if __name__ == "__main__":
    sys.exit(server.run("stdio"))
