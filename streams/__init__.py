"""Stream jobs (Faust, PyFlink) that host the core: raw events in, spans, paths, metrics and alerts out."""
