"""ExecuTorch (`.pte` programs, XNNPACK delegate): the phone and embedded path."""
