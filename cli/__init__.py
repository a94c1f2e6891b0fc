"""The `tracetap` command line: reads the configuration and wires the edges together."""
