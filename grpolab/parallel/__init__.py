"""Many processes: the process group, the split of a step between ranks, DDP / FSDP2 wrapping."""
