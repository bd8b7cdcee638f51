"""The functional core: values and pure decisions. No I/O, no clock reads, no randomness."""
