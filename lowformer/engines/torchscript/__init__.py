"""TorchScript: `.ts` files (scripted or traced, frozen; optimize_for_inference when loaded on the CPU)."""
