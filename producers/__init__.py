"""Node agents and other event sources: they turn the kernel and the wire into raw events on Kafka."""
