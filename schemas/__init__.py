"""tracetap's contracts on Kafka: the topic catalog, the Avro schemas and their serde."""
