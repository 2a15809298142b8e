"""The file to pass to OpenRLHF's --train.agent_func_path: sleuth's agent loop and reward as its AgentExecutor.
Settings come from SLEUTH_* environment variables (see sleuth/integrations/openrlhf_agent.py)."""

from sleuth.integrations.openrlhf_agent import AgentExecutor  # noqa: F401
