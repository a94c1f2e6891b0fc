"""tracetap's engine-agnostic core: event and span models, flows, parsers, assembly, joins, metrics.

Pure Python with no I/O: the agents, the Faust and Flink jobs and the sinks import it; it imports none of them.
"""

__version__ = "0.1.0"
