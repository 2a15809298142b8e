"""Training tasks synthesised from a corpus: generate (bridge, comparison, reasoning), validate, filter.

    from sleuth.synth import SynthConfig, synthesize, write_outputs
    tasks, funnel = synthesize("passages.jsonl.gz", SynthConfig(n=2000, seed=0),
                               closed_book_solver=None, tool_solver=None)
    write_outputs(tasks, funnel, "tasks.jsonl")

Modules: ``generate`` (link graph, passage profiles, bridge and comparison questions), ``reasoning``
(arithmetic tasks whose answers come from running a program), ``validate`` (the funnel stages),
``pipeline`` (configuration, orchestration, output).
"""

from sleuth.synth.generate import GraphConfig, LinkGraph
from sleuth.synth.pipeline import Funnel, SynthConfig, agent_tool_solver, closed_book_solver, synthesize, write_outputs
from sleuth.synth.validate import ClosedBookSolver, EvalIndex, SynthError, ToolSolver, answer_match

__all__ = ["ClosedBookSolver", "EvalIndex", "Funnel", "GraphConfig", "LinkGraph", "SynthConfig", "SynthError",
           "ToolSolver", "agent_tool_solver", "answer_match", "closed_book_solver", "synthesize",
           "write_outputs"]
