"""PyTorch eager: the reference every artifact is compared with, and model names in bench/profile."""
