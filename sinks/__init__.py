"""Sinks: output topics into stores people search (Elasticsearch)."""
