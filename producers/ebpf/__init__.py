"""The eBPF node agent: BPF programs in *.c, their loader and the event decoding."""
